"""Put the benchmark table from bench/results.json (written by bench/run_all.py) into the README's performance section.

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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--results', default=str(ROOT / 'bench' / 'results.json'))
    ap.add_argument('--check', action='store_true')
    a = ap.parse_args()
    table = render(json.loads(Path(a.results).read_text()))
    p = ROOT / 'nbs' / 'index.ipynb'
    nb = json.loads(p.read_text())
    cell = next((c for c in nb['cells'] if START in ''.join(c['source'])), None)
    if cell is None: sys.exit(f'no cell of {p} holds {START} ... {END}')
    src = ''.join(cell['source'])
    new = re.sub(re.escape(START) + r'.*?' + re.escape(END), lambda m: f'{START}\n{table}\n{END}', src, flags=re.S)
    if a.check:
        if new != src: sys.exit('FAIL: the performance table in nbs/index.ipynb is not bench/results.json: run python bench/render_perf.py')
        print('performance table is current'); return
    cell['source'] = new.splitlines(True)
    p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    subprocess.run([sys.executable, str(ROOT / 'scripts' / 'build_readme.py')], check=True, cwd=ROOT)


if __name__ == '__main__':
    main()
