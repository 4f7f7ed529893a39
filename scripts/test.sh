#!/usr/bin/env bash
# The whole test suite. Fails on: notebooks and library out of sync, unclean notebooks, stale README,
# any failing notebook, any failing (or no collected) pytest test.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export PATH="$PWD/.venv/bin:$PATH"
# the built-in model ships in data/default_model: a test must never retrain it silently
export ACTLAB_NO_TRAIN=1
status=0
snapshot() { git status --porcelain --untracked-files=all -- "$@"; find "$@" -type f -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 md5sum; }

echo "== sync check: nbdev_export must leave actlab/ unchanged"
before=$(snapshot actlab); nbdev_export; after=$(snapshot actlab)
if [ "$before" != "$after" ]; then echo "FAIL: actlab/ was out of sync with nbs/ (run nbdev_export and commit)"; git status --short -- actlab; status=1; fi

echo "== clean check: nbdev_clean must leave nbs/ unchanged"
before=$(snapshot nbs); nbdev_clean; after=$(snapshot nbs)
if [ "$before" != "$after" ]; then echo "FAIL: notebooks were not clean (run nbdev_clean and commit)"; git status --short -- nbs; status=1; fi

echo "== README check: README.md must match nbs/index.ipynb"
python scripts/build_readme.py --check || status=1

echo "== ruff check: the exported library (config in ruff.toml; fix findings in the notebooks)"
ruff check actlab || { echo "FAIL: ruff found problems in actlab/ (fix them in nbs/, then nbdev_export)"; status=1; }

echo "== nbdev_test: every notebook, top to bottom"
start=$(date +%s)
# one torch thread per notebook: two notebooks run at once on 2 cores, and oversubscribed OpenMP threads spin
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nbdev_test --n_workers 2 --timing || { echo "FAIL: a notebook failed"; status=1; }
echo "nbdev_test took $(( $(date +%s) - start )) s"

echo "== pytest tests/"
python -m pytest tests/ -q -p no:cacheprovider
rc=$?
if [ $rc -eq 5 ]; then echo "FAIL: pytest collected no tests"; status=1; elif [ $rc -ne 0 ]; then status=1; fi

if [ $status -ne 0 ]; then echo "TEST SUITE FAILED"; else echo "TEST SUITE PASSED"; fi
exit $status
