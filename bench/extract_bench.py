"""Benchmark for actlab.extract (phase C).

1. Throughput: selective extraction (hooks at the answer position, labels computed, shards written to disk) against a
   bare forward pass over the same prompts (clean and corrupted, pre-tokenized, no hooks), in the same run.
   Reports the throughput ratio extract/bare (target >= 0.8): runs are interleaved (bare, extract, bare, ...) and the
   ratio is the median over adjacent pairs, so load from other processes on a shared machine hits both sides alike.
2. Memory: peak RSS of a whole extraction of 5k vs 50k examples, each in its own subprocess (actlab.core.PeakMemory around extract), with
   all positions stored so the data written (hundreds of MB at 50k) dwarfs any per-example bookkeeping.

Usage: .venv/bin/python bench/extract_bench.py [--quick] [--model builtin|tiny] [--skip-rss]
"""
from __future__ import annotations
import argparse, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

os.environ.setdefault('OMP_NUM_THREADS', '1'); os.environ.setdefault('MKL_NUM_THREADS', '1')
import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]

def get_model(kind: str):
    if kind == 'builtin' or (kind == 'auto' and (ROOT / 'data' / 'default_model' / 'config.json').exists()):
        from actlab.models import load_saved_model  # never trains
        return load_saved_model(ROOT / 'data' / 'default_model', device='cpu'), 'builtin'
    # untrained weights, the built-in model's architecture (compute is what matters here)
    from transformer_lens import HookedTransformer
    from actlab.models import BuiltinModelConfig
    from actlab.tasks import build_word_tokenizer
    tok = build_word_tokenizer(); torch.manual_seed(0)
    cfg = BuiltinModelConfig().hooked_config(len(tok))
    return HookedTransformer(cfg, tokenizer=tok).eval(), f'untrained, built-in architecture ({cfg.n_layers} layers, d_model={cfg.d_model}, d_mlp={cfg.d_mlp})'

def big_pairs(model, n: int):
    "A PairSet of `n` examples: the study's pairs, repeated with fresh example ids (the prompts repeat; compute does not care)."
    from actlab.tasks import make_pairs, TaskConfig, PairSet
    base = make_pairs(TaskConfig(), model.tokenizer)
    df = pd.concat([base.df] * (-(-n // len(base))), ignore_index=True).iloc[:n].copy()
    df['example_id'] = np.arange(n)
    return PairSet(df.reset_index(drop=True), base.tokenizer, base.cfg)

def bare_forward(model, pairs, batch_size: int) -> float:
    "(wall, CPU) seconds of plain forward passes over the clean and corrupted prompts (tokenized beforehand, not timed)."
    batches = []
    for g in pairs.groups():
        for kind in ('clean', 'corrupted'):
            t = g.tokens(kind)
            batches += [t[i:i + batch_size] for i in range(0, len(t), batch_size)]
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for b in batches: model(b)
    return time.perf_counter() - t0, time.process_time() - c0

def sites_for(model):
    from actlab.extract import recipe_sites
    L = model.cfg.n_layers
    return tuple(recipe_sites(model, 1, resid_mid_layers=[L - 1], attn_out_layers=[L - 1], heads=[(L - 1, 0)]))

def throughput(model, n: int, repeats: int, batch_size: int):
    from actlab.extract import extract, ExtractConfig
    pairs = big_pairs(model, n)
    cfg = ExtractConfig(hooks=sites_for(model), batch_size=batch_size, rows_per_shard=4096, progress=False)
    bare, ext, bare_cpu, ext_cpu = [], [], [], []
    bare_forward(model, pairs.filter(suffix_length=1), batch_size)  # warm-up
    for r in range(repeats):  # interleaved, so load from other processes hits both alike
        w, c = bare_forward(model, pairs, batch_size); bare.append(w); bare_cpu.append(c)
        d = Path(tempfile.mkdtemp(prefix='actlab-bench-'))
        t0, c0 = time.perf_counter(), time.process_time()
        extract(model, pairs, d / 's', cfg)
        ext.append(time.perf_counter() - t0); ext_cpu.append(time.process_time() - c0)
        size = sum(f.stat().st_size for f in (d / 's' / 'data').iterdir())
        shutil.rmtree(d)
    b, e = float(np.median(bare)), float(np.median(ext))
    return dict(n=n, batch_size=batch_size, sites=list(cfg.hooks), bare_s=b, extract_s=e, ratio=float(np.median(np.array(bare) / np.array(ext))),
                ratio_medians=b / e, ratio_best=min(bare) / min(ext),
                ratio_cpu=float(np.median(bare_cpu)) / float(np.median(ext_cpu)),
                bare_ex_per_s=n / b, extract_ex_per_s=n / e, store_mb=size / 2**20, bare_all=bare, extract_all=ext)

RSS_CHILD = '''
import sys, time, tempfile, shutil, json
sys.path.insert(0, {bench!r})
import extract_bench as eb
from actlab.extract import extract, ExtractConfig
model, _ = eb.get_model({kind!r})
n, rows_per_shard = int(sys.argv[1]), int(sys.argv[2])
pairs = eb.big_pairs(model, n)
from actlab.core import PeakMemory, current_rss_mb
cur = current_rss_mb()
d = tempfile.mkdtemp(prefix='actlab-rss-')
t0 = time.perf_counter()
with PeakMemory() as pm:  # the study's own meter (kernel high-water mark, reset on entry)
    st = extract(model, pairs, d + '/s', ExtractConfig(hooks=eb.sites_for(model), positions='all', batch_size=256,
                 rows_per_shard=rows_per_shard, progress=False))
dt = time.perf_counter() - t0
size = sum(f.stat().st_size for f in st.files)
shutil.rmtree(d)
print(json.dumps(dict(n=n, peak_rss_mb=pm.peak_mb, exact=pm.exact, rss_before_extract_mb=cur,
                      store_mb=size / 2**20, seconds=dt)))
'''

def peak_rss(n: int, kind: str, rows_per_shard: int) -> dict:
    code = RSS_CHILD.format(bench=str(Path(__file__).parent), kind=kind)
    r = subprocess.run([sys.executable, '-c', code, str(n), str(rows_per_shard)], capture_output=True, text=True, env={**os.environ})
    if r.returncode: raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='small sizes (2k throughput; RSS 1k vs 5k with 256 rows per shard)')
    ap.add_argument('--model', default='auto', choices=['auto', 'builtin', 'tiny'])
    ap.add_argument('--skip-rss', action='store_true')
    ap.add_argument('--batch-size', type=int, default=512)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    model, desc = get_model(a.model)
    kind = 'builtin' if desc == 'builtin' else 'tiny'
    print(f'model: {desc}; torch threads: {torch.get_num_threads()}')
    n = 2000 if a.quick else 20000
    t = throughput(model, n, 3 if a.quick else 5, a.batch_size)
    print(f"throughput over {t['n']} examples (clean + corrupted prompts, batch {t['batch_size']}), sites {t['sites']}:")
    print(f"  bare forward      {t['bare_s']:.2f} s  ({t['bare_ex_per_s']:.0f} ex/s)   runs {[round(x, 2) for x in t['bare_all']]}")
    print(f"  extract + write   {t['extract_s']:.2f} s  ({t['extract_ex_per_s']:.0f} ex/s)   runs {[round(x, 2) for x in t['extract_all']]}"
          f"  store {t['store_mb']:.1f} MB")
    print(f"  throughput ratio extract/bare = {t['ratio']:.2f} (median of paired runs; wall clock)  "
          f"target >= 0.8: {'PASS' if t['ratio'] >= 0.8 else 'FAIL'}")
    print(f"    other views: {t['ratio_medians']:.2f} (ratio of medians), {t['ratio_best']:.2f} (best runs), "
          f"{t['ratio_cpu']:.2f} (CPU time of all threads, medians)")
    if not a.skip_rss:
        small, large, rps = (1000, 5000, 256) if a.quick else (5000, 50000, 2048)
        rs = [peak_rss(small, kind, rps), peak_rss(large, kind, rps)]
        print(f'peak RSS of a whole extraction (positions=all, {rps} rows per shard, each in its own process):')
        for r in rs:
            print(f"  {r['n']:>6} examples: peak {r['peak_rss_mb']:.0f} MB during extract (RSS with model and pairs loaded, "
                  f"before extract: {r['rss_before_extract_mb']:.0f} MB), store {r['store_mb']:.0f} MB written in {r['seconds']:.1f} s")
        print(f"  peak RSS ratio {large // 1000}k/{small // 1000}k = {rs[1]['peak_rss_mb'] / rs[0]['peak_rss_mb']:.2f} for "
              f"{rs[1]['store_mb'] / rs[0]['store_mb']:.0f}x the data")

if __name__ == '__main__':
    main()
