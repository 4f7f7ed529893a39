"""Per-example exact patching over all layers x positions (or heads x positions): actlab.patching vs two TransformerLens baselines.

    .venv/bin/python bench/patching_bench.py [--quick] [--pairs N] [--site resid_pre|head_by_pos] [--random-model] [--repeats R]

For N pairs of the default study (512 by default, 64 with --quick), in equal-length groups, computes the per-example logit
difference after patching each clean activation of the site into the corrupted run:
- ours: `actlab.patching.per_example_patch(..., site=...)` (batched, from the cached residual stream);
- batched hook loop (the fair baseline; what a competent TransformerLens user writes): per group, one `run_with_cache` of
  the clean batch, then one `model.run_with_hooks` forward per site over the whole batch, a per-example metric vector out;
- per-example TransformerLens loop (second baseline): for each example, `run_with_cache(clean)` and
  `transformer_lens.patching.get_act_patch_resid_pre` (or `..._attn_head_out_by_pos`) on that example alone.
Also prints the compute bound (`compute_bound`): the most an exact sweep can gain over the batched loop for these pairs.
All three run in this process on the same model and pairs, each warmed up once on the same small group, and each timed as
the median of the same number of runs (--repeats). Prints wall times, the two speedup ratios and the max abs differences.
The machine may be shared: absolute times are noisy, the ratios less so.
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

TL_FN = {'resid_pre': 'get_act_patch_resid_pre', 'head_by_pos': 'get_act_patch_attn_head_out_by_pos'}
HOOK = {'resid_pre': 'blocks.{l}.hook_resid_pre', 'head_by_pos': 'blocks.{l}.attn.hook_z'}


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


def batched_hook_loop(model, site, c, x, a, d):
    "One forward per site over the whole batch, a per-example logit-difference vector out: [N, layer, pos(, head)]."
    _, cache = model.run_with_cache(c)
    N, P = x.shape
    H = model.cfg.n_heads
    shape = (N, model.cfg.n_layers, P) + ((H,) if site == 'head_by_pos' else ())
    out = torch.zeros(shape)
    rows = torch.arange(N)
    for l in range(model.cfg.n_layers):
        name = HOOK[site].format(l=l)
        clean_act = cache[name]
        for p in range(P):
            for h in (range(H) if site == 'head_by_pos' else [None]):
                def hook(act, hook, p=p, h=h):
                    if h is None: act[:, p] = clean_act[:, p]
                    else: act[:, p, h] = clean_act[:, p, h]
                    return act
                logits = model.run_with_hooks(x, fwd_hooks=[(name, hook)])[:, -1]
                ld = logits[rows, a] - logits[rows, d]
                if h is None: out[:, l, p] = ld
                else: out[:, l, p, h] = ld
    return out


def per_example_tl_loop(model, site, c, x, a, d):
    out = []
    for i in range(len(c)):
        _, cache = model.run_with_cache(c[i:i + 1])
        ai, di = int(a[i]), int(d[i])
        metric = lambda logits: logits[0, -1, ai] - logits[0, -1, di]
        r = getattr(TLP, TL_FN[site])(model, x[i:i + 1], cache, metric)
        out.append(r)
    return torch.stack(out)


def compute_bound(model, site, data) -> float:
    """The most any exact sweep can gain over the batched hook loop: the loop's work (every site a full forward of
    n_layers x positions) over the work that cannot be skipped (for each site whose clean and corrupted values differ,
    the layers at or after it times the positions at or after it). Attention's quadratic term and the unembedding are ignored."""
    L = model.cfg.n_layers
    H = model.cfg.n_heads if site == 'head_by_pos' else 1
    full = needed = 0.0
    for c, x, _, _ in data:
        names = [HOOK[site].format(l=l) for l in range(L)]
        _, cc = model.run_with_cache(c, names_filter=lambda n: n in names)
        _, cx = model.run_with_cache(x, names_filter=lambda n: n in names)
        N, P = x.shape
        full += N * L * P * H * L * P
        for l in range(L):
            diff = cc[names[l]] != cx[names[l]]  # [N, P, d] or [N, P, H, d_head]
            diff = diff.flatten(3).any(-1) if site == 'head_by_pos' else diff.any(-1)[..., None]  # [N, P, H]
            w = torch.tensor([(L - l) * (P - p) for p in range(P)], dtype=torch.float64)
            needed += (diff.double().sum((0, 2)) * w).sum().item()
    return full / needed


def timed(fn, data, repeats):
    "Median wall and CPU seconds of `repeats` runs of fn over every group, and the last run's outputs."
    times = []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        outs = [fn(*g) for g in data]
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    w = sorted(t for t, _ in times)[len(times) // 2]
    cpu = sorted(t for _, t in times)[len(times) // 2]
    return w, cpu, outs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--quick', action='store_true', help='64 pairs instead of 512')
    ap.add_argument('--pairs', type=int, default=None)
    ap.add_argument('--site', default='resid_pre', choices=list(TL_FN))
    ap.add_argument('--random-model', action='store_true', help='use a random model instead of the default one')
    ap.add_argument('--memory-mb', type=float, default=256.0)
    ap.add_argument('--d-model', type=int, default=64, help='width of the random model (default: the built-in model\'s)')
    ap.add_argument('--repeats', type=int, default=3, help='runs per side; the median is reported (same for all sides)')
    ap.add_argument('--no-per-example-loop', action='store_true', help='skip the (slow) per-example TransformerLens baseline')
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
          f'site {args.site}; torch threads {torch.get_num_threads()}; OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "unset")}')

    data = [(g.tokens('clean'), g.tokens('corrupted'), g.answer_ids, g.distractor_ids) for g in groups]
    ours_fn = lambda c, x, a, d: per_example_patch(model, c, x, a, d, site=args.site, memory_mb=args.memory_mb)
    loop_fn = lambda c, x, a, d: batched_hook_loop(model, args.site, c, x, a, d)
    tl_fn = lambda c, x, a, d: per_example_tl_loop(model, args.site, c, x, a, d)
    sides = [('ours', ours_fn), ('batched hook loop', loop_fn)] + ([] if args.no_per_example_loop else [('per-example TL loop', tl_fn)])
    warm = [tuple(t[:2] for t in data[0])]
    for _, fn in sides: fn(*warm[0])  # warm-up: the same small group for every side
    res = {name: timed(fn, data, args.repeats) for name, fn in sides}
    ours = res['ours'][2]
    print(f'patch sites: {sum(o.numel() for o in ours)} (examples x sites; each baseline runs one forward per site and batch / example)')
    for name, (w, cpu, _) in res.items():
        print(f'{name}: {w:.3f} s wall, {cpu:.3f} s CPU (median of {args.repeats})')
    for name in [s for s, _ in sides[1:]]:
        w, cpu, outs = res[name]
        diff = max((o.cpu() - t.cpu()).abs().max().item() for o, t in zip(ours, outs))
        tag = 'batched' if name.startswith('batched') else 'per-example'
        print(f'speedup vs {tag} loop: {w / res["ours"][0]:.1f}x wall ({cpu / res["ours"][1]:.1f}x CPU)   max abs diff: {diff:.2e}')
    bound = compute_bound(model, args.site, data)
    w_loop, cpu_loop, _ = res['batched hook loop']
    print(f'compute bound vs the batched loop: {bound:.1f}x (layers and positions at or after each differing site); '
          f'ours reaches {cpu_loop / res["ours"][1] / bound:.0%} of it (CPU), {w_loop / res["ours"][0] / bound:.0%} (wall)')


if __name__ == '__main__':
    main()
