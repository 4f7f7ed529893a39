"""SAE training from the store against SAELens's own cached-activations path, same SAE config and steps; samples/s.

- actlab: `actlab.saes.train_sae(cfg, StoreProvider(store))`, the store written by `write_store` from the activations
- SAELens: `LanguageModelSAETrainingRunner(LanguageModelSAERunnerConfig(use_cached_activations=True, ...))` on the same
  activations saved in its cached-activations format (a `datasets` folder of [context, d_in] rows, as
  CacheActivationsRunner writes it); `override_model` is a random model (not run: the activations are cached)
Both: TopK SAE (d_sae, k), no activation normalization, the same lr, batch size and number of steps, CPU, no
checkpoints, no W&B. One warm-up run each, `--repeats` alternating runs, medians. Prints a RESULT JSON line.

Full size also measures peak memory against data size: SAE training (200 steps) from a 1M-row store vs a 64k-row one,
each in a fresh process (`actlab.core.PeakMemory`).

Usage: .venv/bin/python bench/sae_saelens_bench.py [--quick] [--skip-rss]
"""
from __future__ import annotations
import argparse, json, os, statistics, sys, tempfile, time, warnings
from pathlib import Path

os.environ.setdefault('OMP_NUM_THREADS', '1'); os.environ.setdefault('MKL_NUM_THREADS', '1'); os.environ.setdefault('TQDM_DISABLE', '1')
import torch

HOOK = 'blocks.0.hook_resid_post'


def data(n, d_in, n_feat=512, p=0.02, seed=0):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n_feat, d_in, generator=g), dim=-1)
    on = (torch.rand(n, n_feat, generator=g) < p).float() * (1 + torch.rand(n, n_feat, generator=g))
    return on @ dirs + 0.01 * torch.randn(n, d_in, generator=g)


def saelens_cache(x: torch.Tensor, ctx: int, path: Path):
    "`x` in SAELens's cached-activations format (what CacheActivationsRunner writes)."
    import datasets
    n, d = x.shape
    feats = datasets.Features({HOOK: datasets.Array2D(shape=(ctx, d), dtype='float32'),
                               'token_ids': datasets.Sequence(datasets.Value('int32'), length=ctx)})
    ds = datasets.Dataset.from_dict({HOOK: x.reshape(n // ctx, ctx, d).numpy(), 'token_ids': torch.zeros(n // ctx, ctx, dtype=torch.int32).numpy()},
                                    features=feats)
    ds.save_to_disk(str(path))


def run_saelens(path: Path, d_in, d_sae, k, steps, bs, lr, ctx) -> float:
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig
    from actlab.patching import tiny_model
    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, normalize_activations='none'),
        model_name='unused', hook_name=HOOK, dataset_path=str(path), is_dataset_tokenized=True, streaming=False,
        use_cached_activations=True, cached_activations_path=str(path), context_size=ctx, training_tokens=steps * bs,
        train_batch_size_tokens=bs, store_batch_size_prompts=max(1, bs // ctx), n_batches_in_buffer=4 * bs // ctx, device='cpu', lr=lr,
        lr_scheduler_name='constant', output_path=None, checkpoint_path=None, n_checkpoints=0, n_eval_batches=0,
        logger=LoggingConfig(log_to_wandb=False), verbose=False, dead_feature_window=100, feature_sampling_window=100)
    import datasets
    tokens = datasets.Dataset.from_dict({'input_ids': [[0] * ctx] * 4})  # not read: the activations are cached
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=tokens, override_model=tiny_model(d_model=d_in, n_heads=4))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        runner.run()
    return steps * bs / (time.perf_counter() - t0)


def run_actlab(store, d_sae, k, steps, bs, lr) -> float:
    from actlab.saes import SAETrainConfig, StoreProvider, train_sae
    cfg = SAETrainConfig(architecture='topk', d_sae=d_sae, k=k, steps=steps, batch_size=bs, lr=lr, log_every=20, checkpoint_every=0,
                         normalize=False, dead_feature_window=100, feature_sampling_window=100)
    t0 = time.perf_counter()
    train_sae(cfg, StoreProvider(store, batch_size=bs, seed=0), progress=False)
    return steps * bs / (time.perf_counter() - t0)


RSS_CHILD = """
import json, sys, torch
from actlab.core import PeakMemory, current_rss_mb
from actlab.saes import SAETrainConfig, StoreProvider, train_sae
torch.set_num_threads(1)
before = current_rss_mb()
cfg = SAETrainConfig(architecture='topk', d_sae=512, k=16, steps=int(sys.argv[2]), batch_size=1024, lr=1e-3, log_every=20,
                     checkpoint_every=0, normalize=False)
with PeakMemory() as pk: train_sae(cfg, StoreProvider(sys.argv[1], batch_size=1024, seed=0), progress=False)
print('RSS ' + json.dumps(dict(before_mb=before, peak_mb=pk.peak_mb)))
"""


def rss_check(d_in: int, small_rows: int, rows: int, steps: int, tmp: Path) -> dict:
    "Peak RSS of SAE training from a `rows`-row store vs a `small_rows`-row one, each trained in a fresh process for `steps` steps."
    import subprocess
    from actlab.saes import write_store
    out = {}
    for n in (small_rows, rows):
        path = tmp / f'rss{n}'
        x = torch.cat([data(min(65_536, n - i), d_in, seed=1 + i) for i in range(0, n, 65_536)])  # in chunks: data() holds [n, 512] masks
        st = write_store(path, {HOOK: x}, rows_per_shard=65_536); del x
        r = subprocess.run([sys.executable, '-c', RSS_CHILD, str(path), str(steps)], capture_output=True, text=True)
        line = next((l for l in r.stdout.splitlines() if l.startswith('RSS ')), None)
        if line is None: sys.exit(f'[rss] the training child failed:\n{r.stderr[-2000:]}')
        out[n] = dict(json.loads(line[4:]), store_mb=sum(f.stat().st_size for f in path.rglob('*') if f.is_file()) / 2**20)
    s, b = out[small_rows], out[rows]
    return dict(rows=rows, small_rows=small_rows, store_mb=b['store_mb'], small_store_mb=s['store_mb'], peak_mb=b['peak_mb'],
                small_peak_mb=s['peak_mb'], ratio=b['peak_mb'] / s['peak_mb'],
                growth_mb=b['peak_mb'] - b['before_mb'], small_growth_mb=s['peak_mb'] - s['before_mb'])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--repeats', type=int, default=None)
    ap.add_argument('--skip-rss', action='store_true', help='skip the peak-memory check (1M-row store vs 64k rows; full size only)')
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
    from actlab.saes import write_store
    n, d_in, steps, bs, d_sae, k, ctx = (32_768, 64, 100, 512, 256, 16, 8) if a.quick else (131_072, 64, 400, 1024, 512, 16, 8)
    reps = a.repeats or 3
    lr = 1e-3
    x = data(n, d_in)
    with tempfile.TemporaryDirectory(prefix='actlab-sae-') as td:
        td = Path(td)
        store = write_store(td / 'store', {HOOK: x}, rows_per_shard=8192)
        saelens_cache(x, ctx, td / 'saelens')
        run_actlab(store, d_sae, k, 5, bs, lr); run_saelens(td / 'saelens', d_in, d_sae, k, 5, bs, lr, ctx)  # warm-up
        rates = {'actlab': [], 'saelens': []}
        for _ in range(reps):
            rates['actlab'].append(run_actlab(store, d_sae, k, steps, bs, lr))
            rates['saelens'].append(run_saelens(td / 'saelens', d_in, d_sae, k, steps, bs, lr, ctx))
        rss = None if a.quick or a.skip_rss else rss_check(d_in, 65_536, 1_048_576, 200, td)
    med = {k_: statistics.median(v) for k_, v in rates.items()}
    ratio = med['actlab'] / med['saelens']
    print(f'{n} rows x d_in {d_in}, TopK d_sae {d_sae} k {k}, {steps} steps of {bs}, threads {torch.get_num_threads()}')
    for k_, v in rates.items(): print(f'  {k_:8s} {med[k_]:9.0f} samples/s   runs {[round(r) for r in v]}')
    if rss: print(f"  peak RSS training from a {rss['rows']}-row store ({rss['store_mb']:.0f} MiB): {rss['peak_mb']:.0f} MiB "
                  f"(+{rss['growth_mb']:.0f} over the process before training) vs {rss['small_rows']} rows: {rss['small_peak_mb']:.0f} MiB "
                  f"(+{rss['small_growth_mb']:.0f}); ratio {rss['ratio']:.2f}")
    print(f'  ratio actlab store / SAELens cached activations = {ratio:.2f}  target >= 0.95: {"PASS" if ratio >= 0.95 else "FAIL"}')
    print('RESULT ' + json.dumps(dict(bench='sae_saelens', rows=n, d_in=d_in, d_sae=d_sae, k=k, steps=steps, batch=bs, repeats=reps,
                                      samples_per_s=med, runs=rates, ratio=ratio, rss=rss)))


if __name__ == '__main__':
    main()
