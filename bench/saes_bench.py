"""SAE training throughput: the on-disk store (StoreProvider: parquet shards -> SAELens mixing_buffer) vs an in-memory
tensor provider, through the same SAETrainer loop (actlab.saes.train_sae), same config, same data, in the same run.

    .venv/bin/python bench/saes_bench.py [--quick]

Prints steps/s for each provider (median of the repeats, runs alternated) and the ratio store / memory (target >= 0.9)."""
import argparse, json, statistics, sys, tempfile, time
from pathlib import Path

import torch

from actlab.saes import SAETrainConfig, StoreProvider, TensorProvider, train_sae, write_store


def data(n, d_in, n_feat=512, p=0.02, seed=0):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n_feat, d_in, generator=g), dim=-1)
    on = (torch.rand(n, n_feat, generator=g) < p).float() * (1 + torch.rand(n, n_feat, generator=g))
    return on @ dirs + 0.01 * torch.randn(n, d_in, generator=g)


def one_run(cfg, provider):
    t0 = time.perf_counter()
    res = train_sae(cfg, provider, progress=False)
    return cfg.steps / (time.perf_counter() - t0), res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--quick', action='store_true', help='small sizes (a few seconds)')
    ap.add_argument('--repeats', type=int, default=None)
    a = ap.parse_args()
    n, d_in, steps, bs, d_sae = (20_000, 64, 80, 512, 256) if a.quick else (100_000, 64, 400, 1024, 512)
    repeats = a.repeats or (3 if a.quick else 3)
    x = data(n, d_in)
    with tempfile.TemporaryDirectory() as tmp:
        st = write_store(Path(tmp) / 'store', {'blocks.0.hook_resid_post': x}, rows_per_shard=8192)
        cfg = SAETrainConfig(architecture='topk', d_sae=d_sae, k=16, steps=steps, batch_size=bs, lr=1e-3, log_every=20,
                             checkpoint_every=0, norm_rows=8192)
        make = {'memory': lambda: TensorProvider(x, bs, seed=0), 'store': lambda: StoreProvider(st, batch_size=bs, seed=0)}
        one_run(cfg.replace(steps=5), make['memory']()); one_run(cfg.replace(steps=5), make['store']())  # warm-up
        rates = {k: [] for k in make}
        for _ in range(repeats):
            for k in ('store', 'memory'):
                r, res = one_run(cfg, make[k]())
                rates[k].append(r)
        med = {k: statistics.median(v) for k, v in rates.items()}
        out = dict(rows=n, d_in=d_in, d_sae=d_sae, batch_size=bs, steps=steps, repeats=repeats, threads=torch.get_num_threads(),
                   steps_per_s={k: round(v, 2) for k, v in med.items()},
                   vectors_per_s={k: round(v * bs) for k, v in med.items()},
                   all_runs={k: [round(r, 2) for r in v] for k, v in rates.items()},
                   ratio_store_over_memory=round(med['store'] / med['memory'], 3))
    print(json.dumps(out, indent=1))
    print(f"ratio store/memory = {out['ratio_store_over_memory']:.3f} (target >= 0.9)")


if __name__ == '__main__':
    main()
