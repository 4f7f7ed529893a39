"""Extraction into the store against SAELens's CacheActivationsRunner, and against a bare forward doing the same work.

Same model, same hook (the residual stream entering the last block), same tokens (the corrupted prompts of one
equal-length group of pairs, BOS included, given to SAELens as a local `datasets.Dataset` of `input_ids`), every
position stored, float32, no shuffling. Both write to disk; both stop the forward pass after the hook's block.

- actlab: `actlab.extract.extract(..., ExtractConfig(hooks=(hook,), positions='all', compute_labels=False))`
- SAELens: `CacheActivationsRunner(CacheActivationsRunnerConfig(...), override_dataset=ds).run()` (its `load_model`
  replaced by a function returning the same in-memory model, so nothing is downloaded)
- bare: `model.run_with_hooks(tokens, stop_at_layer=L)` over the same batches, nothing kept (the forward work extraction
  cannot avoid)

One warm-up run of each side, then `--repeats` interleaved repetitions (bare, actlab, SAELens, bare, ...); medians.
Reports activations/s (token positions x one hook per second) and bytes on disk, and prints one JSON line (RESULT ...).

Usage: .venv/bin/python bench/extract_saelens_bench.py [--quick] [--n N] [--repeats R]
"""
from __future__ import annotations
import argparse, json, os, platform, shutil, sys, tempfile, time, warnings
from pathlib import Path

os.environ.setdefault('OMP_NUM_THREADS', '1'); os.environ.setdefault('MKL_NUM_THREADS', '1'); os.environ.setdefault('TQDM_DISABLE', '1')
import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
import extract_bench as eb  # get_model / big_pairs: the same model and pairs as the extraction benchmark


def folder_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in Path(p).rglob('*') if f.is_file())


def equal_length_pairs(model, n: int):
    "`n` pairs of one prompt length (the most common one), with fresh example ids."
    from actlab.tasks import PairSet
    base = eb.big_pairs(model, 4 * n)
    L = int(base.df.seq_len.mode().iloc[0])
    df = base.df[base.df.seq_len == L]
    df = pd.concat([df] * (-(-n // len(df))), ignore_index=True).iloc[:n].copy()
    df['example_id'] = np.arange(n)
    return PairSet(df.reset_index(drop=True), base.tokenizer, base.cfg)


def run_actlab(model, pairs, hook, batch, d: Path) -> tuple[float, int]:
    from actlab.extract import extract, ExtractConfig
    cfg = ExtractConfig(hooks=(hook,), positions='all', compute_labels=False, batch_size=batch, rows_per_shard=4096, progress=False)
    t0 = time.perf_counter()
    extract(model, pairs, d / 'actlab', cfg)
    return time.perf_counter() - t0, folder_bytes(d / 'actlab')


def run_saelens(model, tokens: torch.Tensor, hook, batch, d: Path, buffer_rows: int) -> tuple[float, int]:
    import datasets
    import sae_lens.cache_activations_runner as car
    from sae_lens import CacheActivationsRunnerConfig
    n, ctx = tokens.shape
    ds = datasets.Dataset.from_dict({'input_ids': tokens.tolist()})
    bytes_per_buffer = buffer_rows * ctx * model.cfg.d_model * 4
    cfg = CacheActivationsRunnerConfig(dataset_path='local', model_name='actlab-bench', model_batch_size=batch, hook_name=hook,
                                       d_in=model.cfg.d_model, training_tokens=n * ctx, context_size=ctx, shuffle=False, device='cpu',
                                       dtype='float32', buffer_size_gb=(bytes_per_buffer + 0.5) / 1e9, prepend_bos=False,
                                       new_cached_activations_path=str(d / 'saelens'), streaming=False)
    car.load_model = lambda **kw: model  # the same model object, no download
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        out = car.CacheActivationsRunner(cfg, override_dataset=ds).run()
    dt = time.perf_counter() - t0
    assert len(out) == n, f"SAELens cached {len(out)} sequences, expected {n} (buffer sizing)"
    return dt, folder_bytes(d / 'saelens')


def run_bare(model, tokens: torch.Tensor, stop: int, batch: int) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(tokens), batch): model.run_with_hooks(tokens[i:i + batch], stop_at_layer=stop)
    return time.perf_counter() - t0


def check_same(model, pairs, hook, batch, d: Path, buffer_rows):
    "Both sides store the same numbers (first rows)."
    from actlab.store import ActivationStore
    import datasets
    toks = pairs.tokens('corrupted')
    run_actlab(model, pairs, hook, batch, d); run_saelens(model, toks, hook, batch, d, buffer_rows)
    st = ActivationStore(d / 'actlab')
    ids = st.metadata().example_id.to_numpy()
    a = st.numpy(hook)[np.argsort(ids)]
    s = np.asarray(datasets.load_from_disk(str(d / 'saelens')).with_format('numpy')[hook])
    return float(np.abs(a - s).max())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='2048 sequences, 3 repeats')
    ap.add_argument('--n', type=int, default=None, help='sequences (default 16384; --quick 2048)')
    ap.add_argument('--repeats', type=int, default=None)
    ap.add_argument('--batch-size', type=int, default=256)
    ap.add_argument('--model', default='auto', choices=['auto', 'builtin', 'tiny'])
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    n = a.n or (2048 if a.quick else 16384)
    reps = a.repeats or (3 if a.quick else 5)
    B = a.batch_size
    n = max(B, n // B * B)  # whole batches (SAELens drops a partial buffer)
    model, desc = eb.get_model(a.model)
    hook = f'blocks.{model.cfg.n_layers - 1}.hook_resid_pre'
    pairs = equal_length_pairs(model, n)
    toks = pairs.tokens('corrupted')
    ctx = toks.shape[1]
    buffer_rows = B * max(1, min(n // B, 4096 // B))  # SAELens buffers of whole batches that divide the data
    while n % buffer_rows: buffer_rows -= B
    print(f'model: {desc}; hook {hook}; {n} sequences x {ctx} tokens = {n * ctx} activations of d={model.cfg.d_model}; '
          f'batch {B}; torch threads {torch.get_num_threads()}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs')
    # warm-up: one small run of each side
    small = equal_length_pairs(model, B)
    with tempfile.TemporaryDirectory(prefix='actlab-xs-') as td:
        td = Path(td)
        diff = check_same(model, small, hook, B, td / 'w', B)
        run_bare(model, small.tokens('corrupted'), model.cfg.n_layers, B)
    res = dict(bare=[], actlab=[], saelens=[], actlab_bytes=None, saelens_bytes=None)
    for r in range(reps):
        with tempfile.TemporaryDirectory(prefix='actlab-xs-') as td:
            td = Path(td)
            res['bare'].append(run_bare(model, toks, model.cfg.n_layers, B))
            t, b = run_actlab(model, pairs, hook, B, td); res['actlab'].append(t); res['actlab_bytes'] = b
            t, b = run_saelens(model, toks, hook, B, td, buffer_rows); res['saelens'].append(t); res['saelens_bytes'] = b
    med = {k: float(np.median(res[k])) for k in ('bare', 'actlab', 'saelens')}
    acts = n * ctx
    for k in med: print(f'  {k:8s} {med[k]:7.2f} s  {acts / med[k]:10.0f} activations/s   runs {[round(x, 2) for x in res[k]]}')
    print(f"  bytes on disk: actlab {res['actlab_bytes'] / 2**20:.1f} MiB (activations + labels/metadata + token_mask), "
          f"SAELens {res['saelens_bytes'] / 2**20:.1f} MiB (activations + token_ids)")
    print(f'  max abs difference of the stored activations (warm-up run): {diff:.2e}')
    r_sl, r_bare = med['saelens'] / med['actlab'], med['bare'] / med['actlab']
    print(f'  ratio actlab/SAELens CacheActivationsRunner (activations/s) = {r_sl:.2f}  target >= 1.0: {"PASS" if r_sl >= 1.0 else "FAIL"}')
    print(f'  ratio actlab/bare forward (activations/s) = {r_bare:.2f}')
    out = dict(bench='extract_saelens', n=n, ctx=ctx, d_model=model.cfg.d_model, model=desc, hook=hook, batch=B, repeats=reps,
               seconds=med, runs={k: res[k] for k in ('bare', 'actlab', 'saelens')}, activations_per_s={k: acts / v for k, v in med.items()},
               bytes=dict(actlab=res['actlab_bytes'], saelens=res['saelens_bytes']), ratio_vs_saelens=r_sl, ratio_vs_bare=r_bare,
               max_abs_diff=diff)
    print('RESULT ' + json.dumps(out))


if __name__ == '__main__':
    main()
