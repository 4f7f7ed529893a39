"""Attribution patching (AtP*) vs exact per-example patching, heads x positions, on a GPT-2-small-shaped random model.

    .venv/bin/python bench/atp_bench.py [--quick] [--pairs 64] [--seq 16] [--exact-pairs K] [--repeats R] [--device cpu|cuda]

Full size: a random HookedTransformer of GPT-2 small's shape (12 layers, d_model 768, 12 heads, d_mlp 3072, d_vocab 50257),
64 random prompt pairs of 16 tokens (the corrupted prompt differs in 3 middle positions), site `head_by_pos` (every head at
every position: 12 x 16 x 12 = 2304 sites per pair). --quick: 4 layers, d_model 128, 4 heads, d_vocab 2000, 16 pairs of 10
tokens (about a minute on one CPU thread).
- AtP: `actlab.attribution.attribution_patch(..., site='head_by_pos')` (QK fix on; not needed for z) on every pair;
- exact: `actlab.patching.per_example_patch(..., site='head_by_pos')` on the first --exact-pairs pairs (default: all; on a
  CPU the full-size exact sweep takes hours, so there it defaults to the first 4 pairs: times are compared per pair);
- AtP + verify: `attribution_patch(..., verify_top=10)` on the same pairs as exact.
Both sides are warmed up alike (one run on 2 pairs) and timed as the median of the same number of runs (--repeats).
Agreement on the pairs both sides ran: Spearman of the effects, false-negative rate among each pair's exact top-10, and
the same for a shuffled estimate (the control). The machine may be shared: absolute times are noisy.
"""
import argparse, os, time

import numpy as np
import torch


def median_time(fn, repeats):
    ts, out = [], None
    for _ in range(repeats):
        if torch.cuda.is_available(): torch.cuda.synchronize()
        t0 = time.perf_counter(); out = fn()
        if torch.cuda.is_available(): torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2], out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='a much smaller model and 16 pairs')
    ap.add_argument('--pairs', type=int, default=None)
    ap.add_argument('--seq', type=int, default=None)
    ap.add_argument('--exact-pairs', type=int, default=None, help='run exact patching on the first K pairs only (times per pair)')
    ap.add_argument('--repeats', type=int, default=None, help='runs per side, median reported (default 3; 1 at full size on CPU)')
    ap.add_argument('--memory-mb', type=float, default=1024.0)
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--corrupt', default='mid', choices=['start', 'mid', 'end'],
                    help='where the 3 corrupted positions sit (exact patching skips the positions before them: its cost depends on this)')
    a = ap.parse_args()
    from actlab.patching import tiny_model, per_example_patch, prompt_logit_diff
    from actlab.attribution import attribution_patch, agreement
    if a.quick: shape, n, seq = dict(n_layers=4, d_model=128, n_heads=4, d_vocab=2000), a.pairs or 16, a.seq or 10
    else: shape, n, seq = dict(n_layers=12, d_model=768, n_heads=12, d_vocab=50257), a.pairs or 64, a.seq or 16
    repeats = a.repeats or (1 if not a.quick and a.device == 'cpu' else 3)
    model = tiny_model(**shape, n_ctx=max(32, seq), device=a.device, seed=0)
    g = torch.Generator().manual_seed(0)
    V = shape['d_vocab']
    clean = torch.randint(0, V, (n, seq), generator=g)
    corr = clean.clone(); mid = {'start': 1, 'mid': seq // 2 - 1, 'end': seq - 4}[a.corrupt]
    corr[:, mid:mid + 3] = torch.randint(0, V, (n, 3), generator=g)
    ans, dis = torch.randint(0, V, (n,), generator=g), torch.randint(0, V, (n,), generator=g)
    if a.exact_pairs is None and not a.quick and a.device == 'cpu':
        a.exact_pairs = 4
        print('[bench] full size on a CPU: exact patching on the first 4 pairs only (pass --exact-pairs to change); times are per pair')
    k = n if a.exact_pairs is None else min(n, a.exact_pairs)
    dev = lambda *t: [x.to(a.device) for x in t]
    clean, corr, ans, dis = dev(clean, corr, ans, dis)
    print(f'model: random, {shape["n_layers"]} layers, d_model {shape["d_model"]}, {shape["n_heads"]} heads, d_vocab {V}; '
          f'{n} pairs of {seq} tokens, corrupted at positions {mid}-{mid + 2}; site head_by_pos ({shape["n_layers"] * seq * shape["n_heads"]} sites per pair); '
          f'exact on {k} pairs; device {a.device}; torch threads {torch.get_num_threads()}; '
          f'OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "unset")}')
    atp = lambda m: attribution_patch(model, clean[:m], corr[:m], ans[:m], dis[:m], site='head_by_pos', memory_mb=a.memory_mb)
    exact = lambda m: per_example_patch(model, clean[:m], corr[:m], ans[:m], dis[:m], site='head_by_pos', memory_mb=a.memory_mb)
    ver = lambda m: attribution_patch(model, clean[:m], corr[:m], ans[:m], dis[:m], site='head_by_pos', memory_mb=a.memory_mb, verify_top=10)
    for f in (atp, exact, ver): f(2)  # warm-up, alike
    t_atp, est = median_time(lambda: atp(n), repeats)
    t_exact, ex = median_time(lambda: exact(k), repeats)
    t_ver, vr = median_time(lambda: ver(k), repeats)
    base = prompt_logit_diff(model, corr[:k], ans[:k], dis[:k])
    ag = agreement(est[:k].cpu(), ex.cpu(), base.cpu(), k=10)
    ctl = [agreement(est[:k].cpu(), ex.cpu(), base.cpu(), k=10, shuffle_seed=s) for s in range(10)]
    agv = agreement(vr.cpu(), ex.cpu(), base.cpu(), k=10)
    per = lambda t, m: t / m
    print(f'AtP: {t_atp:.3f} s for {n} pairs ({per(t_atp, n) * 1e3:.1f} ms/pair, median of {repeats})')
    print(f'exact: {t_exact:.3f} s for {k} pairs ({per(t_exact, k) * 1e3:.1f} ms/pair, median of {repeats})')
    print(f'AtP + verify_top=10: {t_ver:.3f} s for {k} pairs ({per(t_ver, k) * 1e3:.1f} ms/pair)')
    print(f'agreement (AtP vs exact, {k} pairs): spearman {ag["spearman"]:.3f} (shuffled control max {max(c["spearman"] for c in ctl):.3f}); '
          f'FNR@{ag["k"]} {ag["fnr"]:.3f} (shuffled control min {min(c["fnr"] for c in ctl):.3f}); '
          f'with verify_top=10: max abs diff on the verified sites 0 by construction, spearman {agv["spearman"]:.3f}')
    print(f'speedup AtP vs exact: {per(t_exact, k) / per(t_atp, n):.1f}x per pair (target >= 100x at full size); '
          f'AtP+verify vs exact: {t_exact / t_ver:.1f}x')


if __name__ == '__main__':
    main()
