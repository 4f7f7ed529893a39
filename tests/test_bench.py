"The benchmark harness's verdicts: the scale bench's growth test, run_all's parser of it, and the README rendering."
import importlib.util, json, math, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / 'bench' / f'{name}.py')
    mod = importlib.util.module_from_spec(spec); sys.path.insert(0, str(ROOT / 'bench'))
    try: spec.loader.exec_module(mod)
    finally: sys.path.remove(str(ROOT / 'bench'))
    return mod


scale, run_all, render_perf = _load('scale_bench'), _load('run_all'), _load('render_perf')


def _runs(power: float, fixed: float = 0.0):
    "Three runs whose phase time grows as fixed + pairs**power, memory as 500 MiB + 0.01 MiB per pair."
    return [dict(n_pairs=n, seconds={'patching': fixed + (n / 100) ** power, 'sae': 6.0},
                 peak_rss_mb={'patching': 500 + 0.01 * n, 'sae': 520.0}) for n in (700, 2800, 11200)]


def test_linear_growth_holds_and_quadratic_does_not():
    lin = {(r['phase'], r['quantity']): r for r in scale.verdicts(_runs(1.0), tol=0.15)}
    assert lin[('patching', 'time')]['holds'] and math.isclose(lin[('patching', 'time')]['slope'], 1.0, abs_tol=1e-3)
    assert lin[('sae', 'time')]['slope'] == 0.0 and lin[('patching', 'peak memory')]['holds']
    quad = {(r['phase'], r['quantity']): r for r in scale.verdicts(_runs(2.0), tol=0.15)}
    assert quad[('patching', 'time')]['holds'] is False and math.isclose(quad[('patching', 'time')]['slope'], 2.0, abs_tol=1e-3)
    # a large fixed cost flattens the small end only: the slope between the two largest runs still sees the quadratic term
    assert {(r['phase'], r['quantity']): r for r in scale.verdicts(_runs(2.0, fixed=50.0), 0.15)}[('patching', 'time')]['holds'] is False


def test_run_all_reads_the_scale_verdicts():
    runs = _runs(2.0)
    out = 'noise\nRESULT ' + json.dumps(dict(n_pairs=[r['n_pairs'] for r in runs], tol=0.15, rows=scale.verdicts(runs, 0.15))) + '\n'
    rows = {r['metric']: r for r in run_all.parse_scale(out)}
    t = rows['time of phase patching: log-log slope from 2800 to 11200 pairs']
    assert t['result'] == 'FAIL' and t['target'] == '<= 1.15'
    assert rows['time of phase sae: log-log slope from 2800 to 11200 pairs']['result'] == 'PASS'
    assert run_all.parse_scale('no result line') == []


def test_render_scale_marks_the_phase_that_grows_too_fast():
    result = dict(runs=_runs(2.0), scales=[1, 4, 16], base_per_cell=25, tol=0.15, command='python bench/scale_bench.py', date='d', load_before=1.0)
    table = render_perf.render_scale(result)
    line = next(l for l in table.splitlines() if l.startswith('| patching |'))
    assert line.endswith('| NO |') and '| 2.00 |' in line
    assert next(l for l in table.splitlines() if l.startswith('| sae |')).endswith('| yes |')
    assert 'docs_src/screenshots/scale.png' in table


def test_the_readme_tables_are_what_the_results_files_render_to():
    r = subprocess.run([sys.executable, str(ROOT / 'bench' / 'render_perf.py'), '--check'], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_scale_figure_is_written(tmp_path):
    pytest.importorskip('matplotlib')
    result = dict(runs=_runs(1.0), hardware=dict(cpus=2, omp_threads='1'), date='d')
    scale.plot(result, tmp_path / 'scale.png')
    assert (tmp_path / 'scale.png').stat().st_size > 10_000


def test_a_variant_run_keeps_the_default_runs_rows(tmp_path, monkeypatch):
    "`--only patching_bench.py:margin` replaces the margin rows only; `--only patching_bench.py` runs the default and each variant."
    import json
    res = tmp_path / 'results.json'
    old = lambda metric, **kw: dict(run_all._row('patching_bench', metric, 1.0, '', '', None), **kw)
    res.write_text(json.dumps(dict(rows=[old('logit_diff row'), old('old margin row', variant='margin')])))
    calls = []
    def fake_run_one(path, full, log_dir, timeout, variant=None):
        calls.append((path.name, variant))
        return [dict(run_all._row('patching_bench', f'new {variant or "default"} row', 2.0, '', '', None), **({'variant': variant} if variant else {}))], 0.0
    monkeypatch.setattr(run_all, 'run_one', fake_run_one)
    args = ['--full', '--results', str(res), '--log-dir', str(tmp_path)]
    assert run_all.main(args + ['--only', 'patching_bench.py:margin']) == 0
    assert [r['metric'] for r in json.loads(res.read_text())['rows']] == ['logit_diff row', 'new margin row']
    calls.clear()
    assert run_all.main(args + ['--only', 'patching_bench.py']) == 0
    assert calls == [('patching_bench.py', None), ('patching_bench.py', 'margin')]
    assert [r['metric'] for r in json.loads(res.read_text())['rows']] == ['new default row', 'new margin row']
    assert run_all.main(args + ['--only', 'patching_bench.py:nope']) == 2
