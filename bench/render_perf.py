"""Put the benchmark table from bench/results.json (written by bench/run_all.py) and the scale table from bench/scale.json
(written by bench/scale_bench.py) and the GPT-2-shape study from bench/gpt2_shape.json (scripts/gpt2_shape.py run) into
the README, each between its markers in nbs/index.ipynb.

    python bench/run_all.py --only extract_saelens_bench.py ...   # writes bench/results.json
    python bench/render_perf.py                                   # rewrites the table in nbs/index.ipynb, then README.md

The table sits between the markers `<!-- bench:start -->` and `<!-- bench:end -->` of the performance cell of
nbs/index.ipynb; nothing in it is typed by hand. `--check` fails if the notebook's table is not what results.json renders to.
"""
from __future__ import annotations
import argparse, json, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = '<!-- bench:start -->', '<!-- bench:end -->'
SCALE_START, SCALE_END = '<!-- scale:start -->', '<!-- scale:end -->'
G2_START, G2_END = '<!-- gpt2shape:start -->', '<!-- gpt2shape:end -->'


def render(results: dict) -> str:
    rows = results['rows']
    fmt = lambda v: '-' if v is None else f'{v:.3g}'
    esc = lambda s: str(s).replace('|', '\\|')
    lines = ['| bench | measured | ratio | baseline (same run) | target | result | mode, date | command |',
             '|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['bench']} | {esc(r['metric'])} | {fmt(r['ratio'])} | {esc(r['baseline'])} | {esc(r['target'])} | "
                     f"{r['result']} | {r.get('mode', '?')}, {r.get('date', '?')} | `{r.get('command', '')}` |")
    hws = sorted({json.dumps(r['hardware'], sort_keys=True) for r in rows if r.get('hardware')})
    for h in map(json.loads, hws):
        lines.append(f"\nHardware: {h['cpu']}, {h['cpus']} CPUs, OMP_NUM_THREADS={h['omp_threads']}, torch {h['torch']}, "
                     f"CUDA: {h['cuda'] or 'none'}, Python {h['python']}.")
    return '\n'.join(lines)


def render_scale(scale: dict) -> str:
    "The scale section from bench/scale.json (written by bench/scale_bench.py): per phase, time and memory at each size, the slope."
    import math
    runs = scale['runs']; n = [r['n_pairs'] for r in runs]; tol = scale['tol']
    lines = [f"Time and peak memory of each phase of `configs/default.yaml` at {' / '.join(map(str, n))} pairs "
             f"({' / '.join(f'{k}x' for k in scale['scales'])} of {scale['base_per_cell']} pairs per cell), each run in a fresh process "
             f"(`{scale['command']}`, {scale['date']}, load average {scale['load_before']:.1f} when it started). "
             f"The slope is the log-log slope between the two largest runs; a phase grows no worse than linearly when it is "
             f"at most {1 + tol:.2f}.", '',
             '| phase | ' + ' | '.join(f'seconds, {k} pairs' for k in n) + ' | time slope | ' +
             ' | '.join(f'peak MiB, {k} pairs' for k in n) + ' | memory slope | linear or better |',
             '|---|' + '---|' * (2 * len(n) + 3)]
    slope = lambda key, ph: math.log(runs[-1][key][ph] / runs[-2][key][ph]) / math.log(n[-1] / n[-2])
    for ph in runs[-1]['seconds']:
        st, sm = slope('seconds', ph), slope('peak_rss_mb', ph)
        lines.append(f"| {ph} | " + ' | '.join(f"{r['seconds'][ph]:.1f}" for r in runs) + f" | {st:.2f} | " +
                     ' | '.join(f"{r['peak_rss_mb'][ph]:.0f}" for r in runs) + f" | {sm:.2f} | {'yes' if max(st, sm) <= 1 + tol else 'NO'} |")
    lines += ['', '![time and peak memory per phase against the number of pairs](docs_src/screenshots/scale.png)']
    return '\n'.join(lines)


def render_gpt2_shape(run: dict) -> str:
    "The GPT-2-small-shape study's per-phase table from bench/gpt2_shape.json (written by scripts/gpt2_shape.py run)."
    m = run['model']; man = run.get('manifest_peak_rss_mb') or {}
    lines = [f"{run['n_pairs']} pairs on a random {m['n_layers']}-layer, d_model {m['d_model']}, {m['n_heads']}-head model with "
             f"vocabulary {m['d_vocab']}; OMP_NUM_THREADS={run['threads']}; load average {', '.join(f'{x:.1f}' for x in run['load'])} "
             f"at the end; {run['date']}; `{run['command']}`" + ('' if run['returncode'] == 0 else f" (exit {run['returncode']})") + '.', '',
             '| phase | seconds | peak RSS, manifest (MiB) | peak RSS, sampler (MiB) |', '|---|---:|---:|---:|']
    if 'setup' in run['peak_rss_mb']: lines.append(f"| setup (imports, loading, pairs) | | | {run['peak_rss_mb']['setup']:.0f} |")
    for ph, sec in run['seconds'].items():
        lines.append(f"| {ph} | {sec:.1f} | {man[ph]:.0f} | {run['peak_rss_mb'][ph]:.0f} |" if ph in man else f"| {ph} | {sec:.1f} | | {run['peak_rss_mb'].get(ph, float('nan')):.0f} |")
    lines.append(f"| **whole run (wall clock)** | **{run['wall_s']:.0f}** | | **{max(run['peak_rss_mb'].values()):.0f}** |")
    return '\n'.join(lines)


def _replace(src: str, start: str, end: str, body: str) -> str:
    return re.sub(re.escape(start) + r'.*?' + re.escape(end), lambda m: f'{start}\n{body}\n{end}', src, flags=re.S)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--results', default=str(ROOT / 'bench' / 'results.json'))
    ap.add_argument('--scale', default=str(ROOT / 'bench' / 'scale.json'))
    ap.add_argument('--gpt2-shape', default=str(ROOT / 'bench' / 'gpt2_shape.json'))
    ap.add_argument('--check', action='store_true')
    a = ap.parse_args()
    sections = [(START, END, lambda: render(json.loads(Path(a.results).read_text())))]
    if Path(a.scale).exists(): sections.append((SCALE_START, SCALE_END, lambda: render_scale(json.loads(Path(a.scale).read_text()))))
    if Path(a.gpt2_shape).exists(): sections.append((G2_START, G2_END, lambda: render_gpt2_shape(json.loads(Path(a.gpt2_shape).read_text()))))
    p = ROOT / 'nbs' / 'index.ipynb'
    nb = json.loads(p.read_text())
    if not any(START in ''.join(c['source']) for c in nb['cells']): sys.exit(f'no cell of {p} holds {START} ... {END}')
    changed = []
    for cell in nb['cells']:
        src = new = ''.join(cell['source'])
        for start, end, body in sections:
            if start in new: new = _replace(new, start, end, body())
        if new != src: changed.append(cell); cell['source'] = new.splitlines(True)
    if a.check:
        if changed: sys.exit('FAIL: the performance tables in nbs/index.ipynb are not what bench/results.json, bench/scale.json and '
                             'bench/gpt2_shape.json render to: run python bench/render_perf.py')
        print('performance tables are current'); return
    p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    subprocess.run([sys.executable, str(ROOT / 'scripts' / 'build_readme.py')], check=True, cwd=ROOT)

if __name__ == '__main__':
    main()
