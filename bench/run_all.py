"""Run every benchmark in bench/ and print one table: benchmark, ratio, the baseline it is measured against, target, pass/fail.

    .venv/bin/python bench/run_all.py            # each bench with --quick (a few minutes in all on 2 CPU cores)
    .venv/bin/python bench/run_all.py --full     # full sizes (the figures in the issues' targets)
    .venv/bin/python bench/run_all.py --only saes_bench.py --only probes_bench.py
    .venv/bin/python bench/run_all.py --full --only patching_bench.py:margin   # one --full variant alone (VARIANTS)

Each bench runs in its own process (with the same OMP/MKL thread settings as this one) and prints its ratio against a
baseline measured in the same run; this script reads those printed lines (each bench's own format, parsed below) and
keeps every bench's full output in --log-dir (default: a temporary folder, printed at the end). A bench without a parser
below is still run and listed with its last output line. With --full, a bench in VARIANTS also runs once per variant
(patching_bench on the margin, the study's metric, at GPT-2 shape). Exit status 1 if any bench fails or misses its target.
"""
from __future__ import annotations
import argparse, os, re, subprocess, sys, tempfile, time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _num(pat: str, text: str) -> float | None:
    m = re.search(pat, text)
    return float(m.group(1)) if m else None


def _row(bench, metric, ratio, baseline, target, ok):
    return dict(bench=bench, metric=metric, ratio=ratio, baseline=baseline, target=target,
                result='n/a' if ok is None else ('PASS' if ok else 'FAIL'))


def parse_patching(out: str) -> list[dict]:
    "patching_bench prints one section per model shape, each line tagged `[builtin]` or `[gpt2-small]`."
    rows, diffs = [], []
    for tag, shape, target in (('builtin', "built-in model's size", None), ('gpt2-small', 'GPT-2-small shape', 0.70)):
        sec = '\n'.join(line[len(tag) + 3:] for line in out.splitlines() if line.startswith(f'[{tag}] '))
        if not sec: continue
        m = re.search(r'metric (\w+);', sec); metric = m.group(1) if m else '?'
        what = f'{shape}, {metric}'
        rb = _num(r'speedup vs batched loop:\s*([\d.]+)x wall', sec); re_ = _num(r'speedup vs per-example loop:\s*([\d.]+)x wall', sec)
        diffs += [v for v in (_num(r'speedup vs batched loop:.*?max abs diff:\s*([\d.eE+-]+)', sec),
                              _num(r'speedup vs per-example loop:.*?max abs diff:\s*([\d.eE+-]+)', sec)) if v is not None]
        bound = _num(r'compute bound vs the batched loop:\s*([\d.]+)x', sec)
        pct = _num(r'compute bound vs the batched loop:.*?ours reaches \d+% of it \(CPU\), (\d+)% \(wall\)', sec)
        bound_u = _num(r'unembedding \(\w+\) counted on both sides:\s*([\d.]+)x', sec)
        pct_u = _num(r'counted on both sides:.*?ours reaches \d+% of it \(CPU\), (\d+)% \(wall\)', sec)
        loop = 'batched hook loop: one TL forward per site over the batch (to the final residual, last position unembedded), per-example vector out'
        rows.append(_row('patching_bench', f'speedup, per-example exact sweep ({what}, wall)', rb, loop,
                         '>= 10x' if target is None else 'none set', None if rb is None or target is not None else rb >= 10))
        if bound is not None:
            ok = None if pct is None or target is None else pct / 100 >= target
            rows.append(_row('patching_bench', f'share of the compute bound reached ({what}, wall)', None if pct is None else pct / 100,
                             f'compute bound {bound:.1f}x vs the batched loop (layers x positions at/after each differing site)',
                             f'>= {target:.0%}' if target is not None else 'none (the issue sets one for the GPT-2 shape)', ok))
        if bound_u is not None and pct_u is not None and metric == 'margin':
            rows.append(_row('patching_bench', f'share of the compute bound with the last position\'s unembedding ({what}, wall)', pct_u / 100,
                             f'compute bound {bound_u:.1f}x (the same, plus the full-vocabulary unembedding every patched row needs)',
                             'none set', None))
        if re_ is not None:
            rows.append(_row('patching_bench', f'speedup, per-example exact sweep ({what}, wall)', re_,
                             'TransformerLens get_act_patch_* looped over examples', '>= 50x', re_ >= 50))
    diff = max(diffs, default=None)
    rows.append(_row('patching_bench', 'max abs difference vs the baselines', diff, 'same', '<= 1e-4', None if diff is None else diff <= 1e-4))
    return rows


def parse_atp(out: str) -> list[dict]:
    r = _num(r'speedup AtP vs exact:\s*([\d.]+)x per pair', out)
    sp = _num(r'spearman ([\d.-]+) \(shuffled control max ([\d.-]+)\)', out)
    ctl = _num(r'shuffled control max ([\d.-]+)\)', out)
    full = 'd_model 768' in out
    return [_row('atp_bench', f'speedup AtP vs exact per-example, heads x positions ({"GPT-2-small shape" if full else "--quick model"})', r,
                 'actlab exact per_example_patch, same pairs', '>= 100x (full size)', None if r is None or not full else r >= 100),
            _row('atp_bench', 'Spearman AtP vs exact (effects)', sp, f'shuffled estimate: {ctl}', '> shuffled control',
                 None if sp is None or ctl is None else sp > ctl)]


def parse_path(out: str) -> list[dict]:
    r = _num(r'speedup:\s*([\d.]+)x wall', out); diff = _num(r'max abs diff:\s*([\d.eE+-]+)', out)
    return [_row('path_bench', 'speedup, per-example path patching (wall)', r, 'naive loop: 2 full forwards per example, sender, receiver',
                 'none set', None),
            _row('path_bench', 'max abs difference vs the naive loop', diff, 'same', '<= 1e-4', None if diff is None else diff <= 1e-4)]


def parse_extract(out: str) -> list[dict]:
    r = _num(r'throughput ratio extract/bare = ([\d.]+)', out)
    rows = [_row('extract_bench', 'throughput, selective extract + disk write', r, 'bare forward pass, same prompts',
                 '>= 0.8', None if r is None else r >= 0.8)]
    m = re.search(r'peak RSS ratio (\d+)k/(\d+)k = ([\d.]+) for (\d+)x the data', out)
    if m:
        rr = float(m.group(3))
        rows.append(_row('extract_bench', f'peak RSS {m.group(1)}k vs {m.group(2)}k examples ({m.group(4)}x the data)', rr,
                         f'the {m.group(2)}k-example extraction', 'flat: <= 1.5 (run_all reading of "does not grow")', rr <= 1.5))
    return rows


def parse_probes(out: str) -> list[dict]:
    base = re.search(r"baseline sklearn (LogisticRegression\([^)]*\))", out)
    rows = []
    for m in re.finditer(r'^(\S.*?)\s{2,}([\d.]+)\s+([\d.]+)\s+(\S+)\s+([\d.]+)\s*$', out, re.M):
        rows.append(_row('probes_bench', f'fit time: {m.group(1).strip()}', float(m.group(3)),
                         f"sklearn {base.group(1) if base else 'LogisticRegression(l1, saga)'}, same data", 'none set (< 1 = faster)', None))
    return rows


def parse_saes(out: str) -> list[dict]:
    r = _num(r'ratio store/memory = ([\d.]+)', out)
    return [_row('saes_bench', 'SAE training steps/s from the on-disk store', r, 'in-memory TensorProvider, same SAETrainer',
                 '>= 0.9', None if r is None else r >= 0.9)]


def _result(out: str) -> dict | None:
    "The JSON a bench prints on its `RESULT {...}` line (the newer benches)."
    import json
    for line in reversed(out.splitlines()):
        if line.startswith('RESULT '): return json.loads(line[7:])
    return None


def parse_extract_saelens(out: str) -> list[dict]:
    r = _result(out)
    if r is None: return []
    acts = r['activations_per_s']
    what = f"{r['n']} seqs x {r['ctx']} tok, d={r['d_model']}, {r['hook']}"
    return [_row('extract_saelens_bench', f'activations/s, extraction into the store ({what}): {acts["actlab"]:.0f}/s, '
                 f'{r["bytes"]["actlab"] / 2**20:.1f} MiB on disk', r['ratio_vs_saelens'],
                 f'SAELens CacheActivationsRunner, same model/hook/tokens: {acts["saelens"]:.0f}/s, {r["bytes"]["saelens"] / 2**20:.1f} MiB',
                 '>= 1.0', r['ratio_vs_saelens'] >= 1.0),
            _row('extract_saelens_bench', 'activations/s, extraction vs a bare forward to the same layer', r['ratio_vs_bare'],
                 f'bare run_with_hooks(stop_at_layer), same batches: {acts["bare"]:.0f}/s', 'none set (<= 1)', None),
            _row('extract_saelens_bench', 'max abs difference of the stored activations vs SAELens', r['max_abs_diff'], 'same',
                 '<= 1e-6', r['max_abs_diff'] <= 1e-6)]


def parse_probes_fair(out: str) -> list[dict]:
    r = _result(out)
    if r is None: return []
    ours = r['sides']['actlab L1LogisticProbe torch (FISTA)']
    rows = []
    for k, sp in r['speedup'].items():
        b = r['sides'][k]
        ok = ours['converged'] and b['converged']
        rows.append(_row('probes_fair_bench', f"L1 logistic fit speedup ({r['n']} x {r['d']}, tol {r['tol']}; objective gap ours "
                         f"{ours['objective_gap']:.1e}, theirs {b['objective_gap']:.1e})", sp,
                         f"{k} on the same standardized X, converged={b['converged']}", 'none set (> 1 = faster)', None if ok else False))
    return rows


def parse_sae_saelens(out: str) -> list[dict]:
    r = _result(out)
    if r is None: return []
    rows = [_row('sae_saelens_bench', f"SAE training samples/s from the store ({r['steps']} steps, batch {r['batch']}, d_in {r['d_in']}, "
                 f"d_sae {r['d_sae']}): {r['samples_per_s']['actlab']:.0f}/s", r['ratio'],
                 f"SAELens LanguageModelSAETrainingRunner on its cached activations: {r['samples_per_s']['saelens']:.0f}/s",
                 '>= 0.95', r['ratio'] >= 0.95)]
    if r.get('rss'):
        m = r['rss']
        rows.append(_row('sae_saelens_bench', f"peak RSS training from a {m['rows']}-row store ({m['store_mb']:.0f} MB) vs a "
                         f"{m['small_rows']}-row one", m['ratio'], f"the {m['small_rows']}-row store: {m['small_peak_mb']:.0f} MB",
                         'flat: <= 1.5', m['ratio'] <= 1.5))
    return rows


def parse_gpu_smoke(out: str) -> list[dict]:
    if 'skipped' in out: return [_row('gpu_smoke', 'CUDA smoke run: skipped (no CUDA device visible)', None, '', '', None)]
    r = _result(out)
    if r is None: return []
    dev = r.get('device', 'CUDA')
    return [_row('gpu_smoke', f"{dev}: {k}" + (f" ({v['seconds']:.1f} s)" if v.get('seconds') is not None and v.get('value') is not None else ''),
                 v['value'] if v.get('value') is not None else v.get('seconds'), v.get('note', ''), 'runs', v.get('ok'))
            for k, v in r['phases'].items()]


def parse_scale(out: str) -> list[dict]:
    r = _result(out)
    if r is None: return []
    a, b = r['n_pairs'][-2:]
    return [_row('scale_bench', f"{row['quantity']} of phase {row['phase']}: log-log slope from {a} to {b} pairs", row['slope'],
                 f"the same phase at {a} pairs (slope 1 = linear)", f"<= {1 + r['tol']:.2f}", row['holds'])
            for row in r['rows']]


def scale_rows(path: Path) -> list[dict]:
    "The scale bench's rows from the file it wrote (bench/scale.json), with its own command and date; [] if there is none."
    import json
    if not path.exists(): return []
    sys.path.insert(0, str(HERE))
    try: import scale_bench
    finally: sys.path.remove(str(HERE))
    res = json.loads(path.read_text())
    out = 'RESULT ' + json.dumps(dict(n_pairs=[r['n_pairs'] for r in res['runs']], tol=res['tol'], rows=scale_bench.verdicts(res['runs'], res['tol'])))
    hw = dict(hardware(), **{k: v for k, v in res.get('hardware', {}).items() if k in ('cpus', 'omp_threads', 'torch')})
    return [dict(r, command=res['command'], date=res['date'], mode=f"1x = {res['base_per_cell']} per cell", hardware=hw)
            for r in parse_scale(out)]


PARSERS = {'scale_bench.py': parse_scale, 'extract_saelens_bench.py': parse_extract_saelens, 'probes_fair_bench.py': parse_probes_fair,
           'sae_saelens_bench.py': parse_sae_saelens, 'gpu_smoke.py': parse_gpu_smoke,
           'patching_bench.py': parse_patching, 'extract_bench.py': parse_extract, 'probes_bench.py': parse_probes,
           'saes_bench.py': parse_saes, 'atp_bench.py': parse_atp, 'path_bench.py': parse_path}


# with --full, these runs of a bench follow its default one (select one alone with --only NAME:VARIANT)
VARIANTS = {'patching_bench.py': {'margin': ['--gpt2-shape', '--metric', 'margin', '--no-per-example-loop']}}  # the study's metric


def hardware() -> dict:
    import platform, torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): cpu = line.split(':', 1)[1].strip(); break
    except OSError: pass
    return dict(cpu=cpu, cpus=os.cpu_count(), omp_threads=os.environ.get('OMP_NUM_THREADS', 'unset'), torch=torch.__version__,
                cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, python=platform.python_version())


def run_one(path: Path, full: bool, log_dir: Path, timeout: int, variant: str | None = None) -> tuple[list[dict], float]:
    cmd = [sys.executable, str(path)] + ([] if full else ['--quick']) + (VARIANTS[path.name][variant] if variant else [])
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
        out, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = (e.stdout or b'').decode() if isinstance(e.stdout, bytes) else (e.stdout or ''), 'timeout'
    secs = time.time() - t0
    (log_dir / f'{path.stem}{"-" + variant if variant else ""}.log').write_text(f'$ {" ".join(cmd)}\n{out}')
    parser = PARSERS.get(path.name)
    rows = parser(out) if parser else []
    for r in rows: r['command'] = ' '.join(['python', f'bench/{path.name}'] + cmd[2:])
    if variant:
        for r in rows: r['variant'] = variant
    skipped = any(r['metric'].endswith('(no CUDA device visible)') for r in rows)
    if rc != 0 or not rows or (all(r['ratio'] is None for r in rows) and not skipped):
        last = (out.strip().splitlines() or [''])[-1][:80]
        why = f'exit {rc}' if rc != 0 else ('no parser for this bench' if parser is None else 'ratio line not found')
        rows = [_row(path.stem, f'{why}: {last}', None, '', '', False if rc != 0 or parser else None)]
    return rows, secs


def table(rows: list[dict]) -> str:
    cols = ['bench', 'metric', 'ratio', 'baseline', 'target', 'result']
    fmt = lambda r, c: ('-' if r[c] is None else f'{r[c]:.3g}') if c == 'ratio' else str(r[c])
    w = {c: max(len(c), *(len(fmt(r, c)) for r in rows)) for c in cols}
    lines = [' | '.join(c.ljust(w[c]) for c in cols), '-+-'.join('-' * w[c] for c in cols)]
    lines += [' | '.join(fmt(r, c).ljust(w[c]) for c in cols) for r in rows]
    return '\n'.join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--full', action='store_true', help='full sizes instead of --quick')
    ap.add_argument('--only', action='append', default=None, help='run only this bench file, with its --full variants, or NAME:VARIANT alone (repeatable)')
    ap.add_argument('--log-dir', default=None, help='keep each bench output here')
    ap.add_argument('--timeout', type=int, default=3600, help='seconds per bench')
    ap.add_argument('--results', default=str(HERE / 'results.json'), help='write the rows, hardware and commands here (read by bench/render_perf.py)')
    ap.add_argument('--with-scale', action='store_true', help='with --full: also rerun bench/scale_bench.py at the default base (hours)')
    ap.add_argument('--scale', default=str(HERE / 'scale.json'), help='with --full and no --with-scale: the scale rows come from this file')
    a = ap.parse_args(argv)
    benches = sorted(p for p in HERE.glob('*.py') if p.name != Path(__file__).name and not p.name.startswith('_'))
    jobs = [(p, v) for p in benches for v in [None] + (list(VARIANTS.get(p.name, {})) if a.full else [])]
    if a.only:
        bad = [o for o in a.only if ':' in o and o.split(':', 1)[1] not in VARIANTS.get(o.split(':', 1)[0], {})]
        if bad: print(f'unknown variant {bad[0]!r}; the variants are {[f"{b}:{v}" for b, vs in VARIANTS.items() for v in vs]}', file=sys.stderr); return 2
        if any(':' in o for o in a.only) and not a.full: print('a NAME:VARIANT run needs --full', file=sys.stderr); return 2
        jobs = [(p, v) for p, v in jobs if p.name in a.only or f'{p.name}:{v}' in a.only]
    if not jobs: print('no benchmarks found', file=sys.stderr); return 2
    log_dir = Path(a.log_dir or tempfile.mkdtemp(prefix='actlab-bench-')); log_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for p, variant in jobs:
        if a.full and p.name == 'scale_bench.py' and not a.with_scale:  # hours at the default base: its own run, read back here
            r = scale_rows(Path(a.scale))
            print(f'scale_bench: {len(r)} rows read from {a.scale} (rerun it with --with-scale, or alone: python bench/scale_bench.py)',
                  file=sys.stderr, flush=True)
            rows += r; continue
        print(f'running {p.name}{":" + variant if variant else ""} ({"full" if a.full else "--quick"}) ...', file=sys.stderr, flush=True)
        r, secs = run_one(p, a.full, log_dir, a.timeout, variant)
        print(f'  {secs:.0f} s', file=sys.stderr, flush=True)
        rows += r
    print(table(rows))
    import datetime, json
    hw = hardware()
    prev = json.loads(Path(a.results).read_text()) if Path(a.results).exists() else {}
    rerun = {(p.stem, v) for p, v in jobs}
    keep = [r for r in prev.get('rows', []) if (r['bench'], r.get('variant')) not in rerun]  # rows of runs not rerun now
    Path(a.results).write_text(json.dumps(dict(rows=keep + [dict(dict(hardware=hw, mode='full' if a.full else 'quick',
                                                                  date=datetime.date.today().isoformat()), **r) for r in rows],
                                               command=' '.join(['python', 'bench/run_all.py'] + (argv or sys.argv[1:]))), indent=1))
    print(f"hardware: {hw['cpu']}, {hw['cpus']} CPUs, OMP_NUM_THREADS={hw['omp_threads']}, torch {hw['torch']}, CUDA {hw['cuda']}")
    print(f'rows written to {a.results} (python bench/render_perf.py puts them into the README)')
    print(f'\nthreads: OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "unset")}; full outputs in {log_dir}')
    return 1 if any(r['result'] == 'FAIL' for r in rows) else 0


if __name__ == '__main__':
    sys.exit(main())
