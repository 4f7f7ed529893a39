"""Per-example resid_pre patching over all layers x positions: actlab.patching vs looping TransformerLens.

    .venv/bin/python bench/patching_bench.py [--quick] [--pairs N] [--random-model]

For N pairs of the default study (512 by default, 64 with --quick), computes the per-example logit difference
after patching the clean resid_pre into the corrupted run at every layer x position:
- ours: `actlab.patching.per_example_patch(..., site='resid_pre')` (batched, from the cached residual stream);
- baseline: for each example, `model.run_with_cache(clean)` then `transformer_lens.patching.get_act_patch_resid_pre`
  on that example alone with a logit-difference metric (its progress bar disabled).
Both run in this process, on the same model and pairs; prints wall times, the speedup ratio and the max abs difference.
"""
import argparse, os, sys, time
from functools import partialmethod

import numpy as np
import torch

from tqdm.auto import tqdm
tqdm.__init__ = partialmethod(tqdm.__init__, disable=True)  # TL's per-call progress bar is not part of its cost

import transformer_lens.patching as TLP
from actlab.patching import per_example_patch, tiny_model
from actlab.tasks import TaskConfig, make_pairs, build_word_tokenizer, PairSet


def load(random_model: bool, args_d_model: int = 64):
    if not random_model:
        from actlab.models import load_model, data_dir, DEFAULT_MODEL_DIR
        if (data_dir() / DEFAULT_MODEL_DIR / 'config.json').exists():
            return load_model(), 'default model (actlab.models.load_model())'
        print('[bench] the default model is not trained yet (load_model() would train it); using a random model of its shape',
              file=sys.stderr)
    tok = build_word_tokenizer()
    m = tiny_model(n_layers=2, d_model=args_d_model, n_heads=4, d_vocab=len(tok))
    m.set_tokenizer(tok, default_padding_side='right')
    return m, f'random 2-layer model (d_model={args_d_model}, d_mlp={4 * args_d_model}, 4 heads)'


def memory_check():
    "Peak RSS growth of a large per-example sweep under several budgets, each in a fresh process (ru_maxrss is a high-water mark)."
    import subprocess
    code = """
import resource, sys, torch
from actlab.patching import per_example_patch, tiny_model, rows_per_chunk
torch.set_grad_enabled(False)
mb = float(sys.argv[1])
m = tiny_model(d_model=128, d_vocab=100, n_ctx=64)
N, seq = 3000, 40
g = torch.Generator().manual_seed(0)
clean = torch.randint(0, 100, (N, seq), generator=g); corr = clean.clone(); corr[:, 5:30] = torch.randint(0, 100, (N, 25), generator=g)
a, d = torch.zeros(N, dtype=torch.long), torch.ones(N, dtype=torch.long)
per_example_patch(m, clean[:2], corr[:2], a[:2], d[:2], memory_mb=mb)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
per_example_patch(m, clean, corr, a, d, memory_mb=mb)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f'budget {mb:.0f} MiB: {rows_per_chunk(m, seq, mb)} rows per forward, peak RSS growth {peak - base:.0f} MiB')
"""
    print('memory check: 3000 prompts of 40 tokens, random 2-layer model d_model=128, resid_pre sweep')
    for mb in (16, 64, 256):
        print(subprocess.run([sys.executable, '-c', code, str(mb)], capture_output=True, text=True).stdout.strip())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--quick', action='store_true', help='64 pairs instead of 512')
    ap.add_argument('--pairs', type=int, default=None)
    ap.add_argument('--random-model', action='store_true', help='use a random model instead of the default one')
    ap.add_argument('--memory-mb', type=float, default=256.0)
    ap.add_argument('--d-model', type=int, default=64, help='width of the random model (default: the built-in model\'s)')
    ap.add_argument('--memory-check', action='store_true', help='also measure peak memory against the budget')
    args = ap.parse_args()
    if args.memory_check: memory_check()
    n = args.pairs or (64 if args.quick else 512)
    torch.set_grad_enabled(False)
    model, what = load(args.random_model, args.d_model)
    pairs = make_pairs(TaskConfig(), model.tokenizer)
    rng = np.random.default_rng(0)
    sub = pairs.df.iloc[np.sort(rng.choice(len(pairs.df), size=min(n, len(pairs.df)), replace=False))].reset_index(drop=True)
    pairs = PairSet(sub, pairs.tokenizer, pairs.cfg)
    groups = pairs.groups()
    print(f'model: {what}; layers={model.cfg.n_layers}, d_model={model.cfg.d_model}, heads={model.cfg.n_heads}')
    print(f'pairs: {len(pairs)} in {len(groups)} equal-length groups; seq lengths {sorted(pairs.df.seq_len.unique() + 1)} (with BOS); '
          f'torch threads {torch.get_num_threads()}')

    data = [(g.tokens('clean'), g.tokens('corrupted'), g.answer_ids, g.distractor_ids) for g in groups]
    # warm-up (first-call overheads) on one small group, both sides
    c, x, a, d = data[0]
    per_example_patch(model, c[:2], x[:2], a[:2], d[:2], site='resid_pre', memory_mb=args.memory_mb)

    times = []
    for _ in range(3):  # ours is short: median of 3 runs (the TransformerLens loop runs once; it is long enough to average)
        t0, c0 = time.perf_counter(), time.process_time()
        ours = [per_example_patch(model, c, x, a, d, site='resid_pre', memory_mb=args.memory_mb) for c, x, a, d in data]
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    t_ours, cpu_ours = sorted(times)[1]

    t0, c0 = time.perf_counter(), time.process_time()
    theirs = []
    for c, x, a, d in data:
        out = []
        for i in range(len(c)):
            _, cache = model.run_with_cache(c[i:i + 1])
            ai, di = int(a[i]), int(d[i])
            metric = lambda logits: logits[0, -1, ai] - logits[0, -1, di]
            out.append(TLP.get_act_patch_resid_pre(model, x[i:i + 1], cache, metric))
        theirs.append(torch.stack(out))
    t_tl, cpu_tl = time.perf_counter() - t0, time.process_time() - c0

    diff = max((o.cpu() - t.cpu()).abs().max().item() for o, t in zip(ours, theirs))
    print(f'patch sites: {sum(o.numel() for o in ours)} (examples x layers x positions; TransformerLens runs one forward each)')
    print(f'ours (actlab.patching.per_example_patch): {t_ours:.3f} s wall, {cpu_ours:.3f} s CPU (median of 3)')
    print(f'TransformerLens loop (get_act_patch_resid_pre per example): {t_tl:.3f} s wall, {cpu_tl:.3f} s CPU')
    print(f'speedup: {t_tl / t_ours:.1f}x wall ({cpu_tl / cpu_ours:.1f}x CPU)   max abs diff: {diff:.2e}   (targets: >= 50x, <= 1e-4)')


if __name__ == '__main__':
    main()
