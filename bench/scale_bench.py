"""How the default study grows with its number of prompt pairs: time and peak memory of each phase at 1x, 4x and 16x.

    .venv/bin/python bench/scale_bench.py                          # 1x = the default config's 200 pairs per cell (5600 pairs)
    .venv/bin/python bench/scale_bench.py --base-per-cell 25       # 1x = 25 per cell (700 pairs): 16x = 11 200 pairs
    .venv/bin/python bench/scale_bench.py --quick                  # 1x = 4 per cell (112 pairs), results to a temporary file
    .venv/bin/python bench/scale_bench.py --plot-only              # redraw the figure from bench/scale.json

Each size runs `actlab run` on `configs/default.yaml` with only `task.n_per_cell` changed (base x 1, 4, 16), in a fresh
process, and reads the run's manifest: `seconds` and `peak_rss_mb` per phase (`actlab.core.PeakMemory`: the process's
peak resident memory while the phase ran, the model included). Writes bench/scale.json and docs_src/screenshots/scale.png
(time on log-log axes with a line of slope 1 through each phase's smallest run; memory on a linear axis from 0).

A phase "grows no worse than linearly" when its log-log slope between the 4x and the 16x run is at most 1 + `--tol`.
The default 0.15 allows for timing noise: on this shared 2-core machine the same benchmark has moved by 10-15% between
runs (the SAE-training ratio read 0.93-1.20 over four runs), and a 10% error at each end moves a slope over a 4x step
by log(1.1^2)/log(4) = 0.14. The slope between the two largest
runs is used because fixed costs (loading, the SAE's fixed steps, fixed-size samples such as the decodability sample)
flatten the small end. Exit status 1 if any phase's time or memory grows faster.
"""
from __future__ import annotations
import argparse, json, math, os, platform, subprocess, sys, tempfile, time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCALES = (1, 4, 16)


def run_size(base_cfg: dict, per_cell: int, out: Path, timeout: float) -> dict:
    "Run the study with `n_per_cell=per_cell` in a fresh process; return its manifest's pairs, seconds and peak memory."
    cfg = json.loads(json.dumps(base_cfg)); cfg['task']['n_per_cell'] = per_cell; cfg['name'] = f'scale{per_cell}'
    path = out / f'scale{per_cell}.yaml'; path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, '-m', 'actlab.cli', 'run', str(path), '--out', str(out), '--no-progress', '--overwrite'],
                       capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f'[scale] the study at n_per_cell={per_cell} failed (exit {r.returncode}):\n{r.stderr[-3000:]}')
    m = json.loads((out / cfg['name'] / 'manifest.json').read_text())
    return dict(n_per_cell=per_cell, n_pairs=m['n_pairs'], wall_s=round(wall, 1), seconds=m['seconds'], peak_rss_mb=m['peak_rss_mb'])


def slopes(runs: list[dict], key: str) -> dict:
    "Per phase, the log-log slope of `key` (seconds or peak_rss_mb) against pairs between the two largest runs."
    a, b = runs[-2], runs[-1]
    out = {}
    for phase in b[key]:
        va, vb = a[key].get(phase), b[key].get(phase)
        out[phase] = None if not va or not vb else round(math.log(vb / va) / math.log(b['n_pairs'] / a['n_pairs']), 3)
    return out


def verdicts(runs: list[dict], tol: float) -> list[dict]:
    rows = []
    for key, what in (('seconds', 'time'), ('peak_rss_mb', 'peak memory')):
        for phase, s in slopes(runs, key).items():
            rows.append(dict(phase=phase, quantity=what, **{f'{r["n_pairs"]} pairs': r[key].get(phase) for r in runs},
                             slope=s, holds=None if s is None else s <= 1 + tol))
    return rows


def plot(result: dict, path: Path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    runs = result['runs']; n = [r['n_pairs'] for r in runs]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], 'seconds', 'phase time (s)'), (axes[1], 'peak_rss_mb', 'peak resident memory (MiB)')):
        for phase in runs[-1][key]:
            y = [r[key].get(phase) for r in runs]
            line, = ax.plot(n, y, marker='o', label=phase)
            if key == 'seconds':  # slope 1 (linear growth) through the phase's smallest run
                ax.plot(n, [y[0] * k / n[0] for k in n], ls=':', color=line.get_color(), lw=0.8)
        ax.set_xscale('log'); ax.set_xlabel('prompt pairs'); ax.set_ylabel(label)
        if key == 'seconds': ax.set_yscale('log')
        else: ax.set_ylim(0, 1.15 * max(v for r in runs for v in r[key].values()))
        ax.set_xticks(n); ax.set_xticklabels([str(k) for k in n]); ax.grid(True, which='both', alpha=0.3)
    axes[0].set_title('time per phase (dotted: linear growth)', fontsize=10)
    axes[1].set_title('peak resident memory of the process during each phase (model included)', fontsize=10)
    axes[1].legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0))
    h = result['hardware']
    fig.suptitle(f"default study at {' / '.join(map(str, n))} pairs; {h['cpus']} CPUs, OMP_NUM_THREADS={h['omp_threads']}, "
                 f"{result['date']}", fontsize=10)
    fig.tight_layout(); path.parent.mkdir(parents=True, exist_ok=True); fig.savefig(path, dpi=110); plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--config', default=str(ROOT / 'configs' / 'default.yaml'))
    ap.add_argument('--base-per-cell', type=int, default=None, help="1x (default: the config's task.n_per_cell)")
    ap.add_argument('--tol', type=float, default=0.15, help='allowed excess of the log-log slope over 1')
    ap.add_argument('--out', default=None, help='results root for the runs (default: a temporary folder, removed)')
    ap.add_argument('--json', default=str(ROOT / 'bench' / 'scale.json'))
    ap.add_argument('--figure', default=str(ROOT / 'docs_src' / 'screenshots' / 'scale.png'))
    ap.add_argument('--timeout', type=float, default=4 * 3600, help='seconds per run')
    ap.add_argument('--plot-only', action='store_true')
    ap.add_argument('--quick', action='store_true', help='1x = 4 per cell; writes to a temporary json and figure unless given')
    a = ap.parse_args(argv)
    if a.quick:
        a.base_per_cell = a.base_per_cell or 4
        if a.json == ap.get_default('json'): a.json = tempfile.mktemp(suffix='-scale.json')
        if a.figure == ap.get_default('figure'): a.figure = tempfile.mktemp(suffix='-scale.png')
    if a.plot_only:
        result = json.loads(Path(a.json).read_text())
    else:
        base_cfg = yaml.safe_load(Path(a.config).read_text())
        base = a.base_per_cell or base_cfg['task']['n_per_cell']
        if base < 1: sys.exit('[scale] --base-per-cell must be a positive number of pairs per cell')
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(a.out or tmp); out.mkdir(parents=True, exist_ok=True)
            runs = []
            for k in SCALES:
                print(f'[scale] {k}x: n_per_cell={base * k} ...', flush=True)
                runs.append(run_size(base_cfg, base * k, out, a.timeout))
                print(f"[scale]   {runs[-1]['n_pairs']} pairs, {runs[-1]['wall_s']} s: {runs[-1]['seconds']}; MiB {runs[-1]['peak_rss_mb']}", flush=True)
        import torch
        result = dict(config=os.path.relpath(a.config, ROOT), base_per_cell=base, scales=list(SCALES), runs=runs, tol=a.tol,
                      date=time.strftime('%Y-%m-%d'), load_before=os.getloadavg()[0],
                      command='python bench/scale_bench.py' + (' --quick' if a.quick else '' if a.base_per_cell is None else f' --base-per-cell {base}'),
                      hardware=dict(cpu=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                                    omp_threads=os.environ.get('OMP_NUM_THREADS', 'unset'), torch=torch.__version__))
        Path(a.json).write_text(json.dumps(result, indent=1) + '\n')
    rows = verdicts(result['runs'], result['tol'])
    import pandas as pd
    print(pd.DataFrame(rows).to_string(index=False))
    plot(result, Path(a.figure))
    print(f'figure: {a.figure}; numbers: {a.json}')
    bad = [f"{r['phase']} {r['quantity']} (slope {r['slope']})" for r in rows if r['holds'] is False]
    print('every phase grows no worse than linearly' if not bad else 'grows faster than linearly: ' + ', '.join(bad))
    print('RESULT ' + json.dumps(dict(n_pairs=[r['n_pairs'] for r in result['runs']], tol=result['tol'], rows=rows)))
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
