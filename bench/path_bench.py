"""Per-example path patching: actlab.path_patching.path_patch (batched) vs the naive loop (two full forwards per example, sender, receiver).

    .venv/bin/python bench/path_bench.py [--quick] [--pairs N] [--random-model] [--freeze heads|all] [--repeats R]

Every sender (heads and MLPs) into every receiver (each head's q, k and v input, and the final residual stream) of the
built-in model (or a random model of its shape), for N pairs of one equal-length group of the default study (16 by
default, 4 with --quick). The naive loop is `path_patch_naive`: the textbook definition written independently (per-head
`hook_result` freezing, one pair of full forwards per example, sender and receiver). Both are warmed up alike and timed as
the median of the same number of runs. Prints wall times, the speedup and the max abs difference.
"""
import argparse, os, sys, time

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='4 pairs instead of 16')
    ap.add_argument('--pairs', type=int, default=None)
    ap.add_argument('--random-model', action='store_true')
    ap.add_argument('--freeze', default='heads', choices=['heads', 'all'])
    ap.add_argument('--repeats', type=int, default=3)
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    from actlab.patching import tiny_model
    from actlab.path_patching import path_patch, path_patch_naive, senders_of, receivers_of
    from actlab.tasks import TaskConfig, make_pairs, PairSet, build_word_tokenizer
    model = None
    if not a.random_model:
        from actlab.models import load_model, data_dir, DEFAULT_MODEL_DIR
        if (data_dir() / DEFAULT_MODEL_DIR / 'config.json').exists(): model, what = load_model(), 'default model'
    if model is None:
        tok = build_word_tokenizer()
        model = tiny_model(n_layers=2, d_model=64, n_heads=4, d_vocab=len(tok)); model.set_tokenizer(tok, default_padding_side='right')
        what = 'random model of the default shape'
    n = a.pairs or (4 if a.quick else 16)
    pairs = make_pairs(TaskConfig(), model.tokenizer).filter(suffix_length=4)
    g = max(pairs.groups(), key=len)
    g = PairSet(g.df.head(n).reset_index(drop=True), g.tokenizer, g.cfg)
    c, x, ans, dis = g.tokens('clean'), g.tokens('corrupted'), g.answer_ids, g.distractor_ids
    S, R = len(senders_of(model)), len(receivers_of(model))
    print(f'model: {what}; layers={model.cfg.n_layers}, d_model={model.cfg.d_model}, heads={model.cfg.n_heads}; {len(g)} pairs of '
          f'{c.shape[1]} tokens; {S} senders x {R} receivers; freeze={a.freeze}; torch threads {torch.get_num_threads()}; '
          f'OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "unset")}')
    ours = lambda m: path_patch(model, c[:m], x[:m], ans[:m], dis[:m], freeze=a.freeze).patched
    naive = lambda m: path_patch_naive(model, c[:m], x[:m], ans[:m], dis[:m], freeze=a.freeze)
    ours(1); naive(1)  # warm-up, alike
    res = {}
    for name, fn in [('ours', ours), ('naive', naive)]:
        ts = []
        for _ in range(a.repeats):
            t0 = time.perf_counter(); out = fn(len(g)); ts.append(time.perf_counter() - t0)
        res[name] = (sorted(ts)[len(ts) // 2], out)
    diff = (res['ours'][1] - res['naive'][1]).abs().max().item()
    print(f'ours (path_patch): {res["ours"][0]:.3f} s (median of {a.repeats})')
    print(f'naive loop (path_patch_naive, up to {2 * len(g) * S * R} forwards): {res["naive"][0]:.3f} s (median of {a.repeats})')
    print(f'speedup: {res["naive"][0] / res["ours"][0]:.1f}x wall   max abs diff: {diff:.2e}')


if __name__ == '__main__':
    main()
