#!/usr/bin/env bash
# Install what the browser tests need: Debian's chromium (Playwright drives it via executable_path; never
# `playwright install`, which downloads its own browser build) and the python package playwright.
# Usage: bash scripts/install_browser.sh   (exit 0 when /usr/bin/chromium works afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if ! "$PY" -c "import playwright" 2>/dev/null; then "$PY" -m pip install -q "playwright>=1.40"; fi
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
chromium --version
