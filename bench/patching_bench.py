"""Per-example exact patching over all layers x positions (or heads x positions): actlab.patching vs two TransformerLens baselines.

    .venv/bin/python bench/patching_bench.py [--quick] [--pairs N] [--site resid_pre|head_by_pos] [--metric logit_diff|margin]
                                             [--random-model] [--repeats R] [--gpt2-shape | --no-gpt2-shape] [--gpt2-pairs N]

Two model shapes, each in its own section of the output (tagged `[builtin]` and `[gpt2-small]`):
- the built-in model (`actlab.models.load_model()`: 6 layers, d_model 64), N pairs of the default study (512 by default,
  64 with --quick); skipped with --gpt2-shape;
- a random-weight HookedTransformer with GPT-2 small's architecture (12 layers, d_model 768, 12 heads, d_mlp 3072,
  d_vocab 50257, n_ctx 1024, pre-LN, gelu_new) on --gpt2-pairs pairs (8; 4 with --quick) of the same study, by default
  all of the study's median prompt length (--gpt2-seq-len; the word tokenizer's ids fit inside GPT-2's vocabulary). The
  batched loop costs about n_layers x positions GPT-2 forwards per group, a few seconds each on 2 loaded cores, hence the
  small count; the per-example TL loop is not run there; skipped with --no-gpt2-shape.
For each pair, in equal-length groups, computes the per-example metric (--metric: the logit difference, or
`actlab.metrics.margin`, which the study patches on) after patching each clean activation of the site into the corrupted run:
- ours: `actlab.patching.per_example_patch(..., site=..., metric=...)` (batched, from the cached residual stream);
- batched hook loop (the fair baseline; what a competent TransformerLens user writes): per group, one `run_with_cache` of
  the clean batch, then one `model.run_with_hooks` forward per site over the whole batch (stopped at the final residual
  stream, `stop_at_layer`), the final LayerNorm and unembedding applied at the last position only (the metric reads
  nothing else), and the metric from `actlab.metrics` on those logits: a per-example metric vector out;
- per-example TransformerLens loop (second baseline): for each example, `run_with_cache(clean)` and
  `transformer_lens.patching.get_act_patch_resid_pre` (or `..._attn_head_out_by_pos`) on that example alone.
Also prints the compute bound (`compute_bound`): the most an exact sweep can gain over the batched loop for these pairs,
and the share of it ours reaches.
All sides run in this process on the same model and pairs, each warmed up once on the same small group, and each timed as
the median of the same number of runs (--repeats). Prints wall times, the speedup ratios and the max abs differences.
The machine may be shared: absolute times are noisy, the ratios less so.
"""
import argparse, os, sys, time
from functools import partialmethod

import numpy as np
import torch

from tqdm.auto import tqdm
tqdm.__init__ = partialmethod(tqdm.__init__, disable=True)  # TL's per-call progress bar is not part of its cost

import transformer_lens.patching as TLP
from actlab import metrics as M
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


GPT2_SMALL = dict(n_layers=12, d_model=768, n_heads=12, d_mlp=3072, d_vocab=50257, n_ctx=1024, act_fn='gelu_new',
                  normalization_type='LN')


def load_gpt2_shape():
    "A random-weight HookedTransformer with GPT-2 small's architecture, with the study's word tokenizer (its ids fit in 50257)."
    tok = build_word_tokenizer()
    m = tiny_model(**GPT2_SMALL)
    m.set_tokenizer(tok, default_padding_side='right')
    return m, 'random GPT-2-small-shaped model (12 layers, d_model 768, 12 heads, d_mlp 3072, d_vocab 50257, gelu_new, LN pre)'


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


def batched_hook_loop(model, site, c, x, a, d, metric='logit_diff'):
    """One forward per site over the whole batch, a per-example metric vector out: [N, layer, pos(, head)]. Each forward
    stops at the final residual stream; the final LayerNorm and unembedding run at the last position only (all the
    metric reads), and the metric is `actlab.metrics`' (`margin` or `logit_diff`)."""
    _, cache = model.run_with_cache(c)
    N, P = x.shape
    H = model.cfg.n_heads
    L = model.cfg.n_layers
    shape = (N, L, P) + ((H,) if site == 'head_by_pos' else ())
    out = torch.zeros(shape)
    fn = M.metric_fn(metric)
    for l in range(L):
        name = HOOK[site].format(l=l)
        clean_act = cache[name]
        for p in range(P):
            for h in (range(H) if site == 'head_by_pos' else [None]):
                def hook(act, hook, p=p, h=h):
                    if h is None: act[:, p] = clean_act[:, p]
                    else: act[:, p, h] = clean_act[:, p, h]
                    return act
                resid = model.run_with_hooks(x, fwd_hooks=[(name, hook)], stop_at_layer=L)[:, -1:]
                logits = model.unembed(model.ln_final(resid))[:, 0]
                v = fn(logits, a, d)
                if h is None: out[:, l, p] = v
                else: out[:, l, p, h] = v
    return out


def per_example_tl_loop(model, site, c, x, a, d, metric='logit_diff'):
    out = []
    fn = M.metric_fn(metric)
    for i in range(len(c)):
        _, cache = model.run_with_cache(c[i:i + 1])
        ai, di = a[i:i + 1], d[i:i + 1]
        r = getattr(TLP, TL_FN[site])(model, x[i:i + 1], cache, lambda logits, ai=ai, di=di: fn(logits[:, -1], ai, di)[0])
        out.append(r)
    return torch.stack(out)


def compute_bound(model, site, data, metric='logit_diff') -> tuple[float, float]:
    """The most any exact sweep can gain over the batched hook loop, as (blocks only, with the last position's unembedding).

    The loop's work: every site is a full forward, n_layers x positions block-positions per example. The work no exact
    sweep can skip: for each (example, site) whose clean and corrupted values differ, the layers at or after the site
    times the positions at or after it (earlier layers and positions are the corrupted run's; sites with equal values
    change nothing). The first figure counts only that block work (the issue's definition); the second also counts, on
    both sides, the unembedding of the last position that each patched row needs (for 'margin' the
    full vocabulary, d_model x d_vocab multiply-adds, about 5.5 GPT-2-small block-positions; for 'logit_diff' two
    columns), in units of one block-position (4 d_model^2 + 2 d_model d_mlp multiply-adds). Both ignore attention's
    quadratic term (scores over earlier positions: it shrinks the suffix's share less than the rest), LayerNorms,
    embeddings, and the clean and corrupted runs themselves (one forward per example on either side)."""
    L, c = model.cfg.n_layers, model.cfg
    H = c.n_heads if site == 'head_by_pos' else 1
    block = 4 * c.d_model * c.n_heads * c.d_head + (0 if c.attn_only else 2 * c.d_model * (c.d_mlp or 4 * c.d_model))
    unembed = c.d_model * (c.d_vocab if metric == 'margin' else 2) / block  # per patched row, in block-positions
    full = needed = rows = loop_rows = 0.0
    for cl, x, _, _ in data:
        names = [HOOK[site].format(l=l) for l in range(L)]
        _, cc = model.run_with_cache(cl, names_filter=lambda n: n in names)
        _, cx = model.run_with_cache(x, names_filter=lambda n: n in names)
        N, P = x.shape
        full += N * L * P * H * L * P
        loop_rows += N * L * P * H
        for l in range(L):
            diff = cc[names[l]] != cx[names[l]]  # [N, P, d] or [N, P, H, d_head]
            diff = diff.flatten(3).any(-1) if site == 'head_by_pos' else diff.any(-1)[..., None]  # [N, P, H]
            w = torch.tensor([(L - l) * (P - p) for p in range(P)], dtype=torch.float64)
            needed += (diff.double().sum((0, 2)) * w).sum().item()
            rows += diff.sum().item()
    return full / needed, (full + loop_rows * unembed) / (needed + rows * unembed)


def timed(sides, data, repeats):
    """Median wall and CPU seconds of `repeats` runs of each side over every group, and each side's last outputs. The sides
    are interleaved (repeat 1 of every side, then repeat 2, ...) so that a change in the machine's load hits all of them."""
    times = {name: [] for name, _ in sides}
    outs = {}
    for _ in range(repeats):
        for name, fn in sides:
            t0, c0 = time.perf_counter(), time.process_time()
            outs[name] = [fn(*g) for g in data]
            times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    med = lambda xs: sorted(xs)[len(xs) // 2]
    return {name: (med([t for t, _ in ts]), med([c for _, c in ts]), outs[name]) for name, ts in times.items()}


def select_pairs(model, n, seq_len=None):
    "`n` pairs of the default study drawn at random (seed 0); only prompts of `seq_len` tokens with BOS if given (-1: the median length)."
    pairs = make_pairs(TaskConfig(), model.tokenizer)
    df = pairs.df
    if seq_len is not None:
        if seq_len == -1: seq_len = int(np.sort(df.seq_len.to_numpy())[len(df) // 2]) + 1
        df = df[df.seq_len + 1 == seq_len]
        if not len(df): sys.exit(f'no pairs of {seq_len} tokens; the study has lengths {sorted(pairs.df.seq_len.unique() + 1)} (with BOS)')
    rng = np.random.default_rng(0)
    sub = df.iloc[np.sort(rng.choice(len(df), size=min(n, len(df)), replace=False))].reset_index(drop=True)
    return PairSet(sub, pairs.tokenizer, pairs.cfg)


def run_shape(tag, model, what, n, args, per_example_loop, seq_len=None):
    "Time ours against the baselines on `n` pairs of the study on `model`; print every line with `[tag]` in front."
    say = lambda msg: print(f'[{tag}] {msg}', flush=True)
    pairs = select_pairs(model, n, seq_len)
    groups = pairs.groups()
    say(f'model: {what}; layers={model.cfg.n_layers}, d_model={model.cfg.d_model}, heads={model.cfg.n_heads}, d_vocab={model.cfg.d_vocab}')
    say(f'pairs: {len(pairs)} in {len(groups)} equal-length groups; seq lengths {sorted(pairs.df.seq_len.unique() + 1)} (with BOS); '
        f'site {args.site}; metric {args.metric}; torch threads {torch.get_num_threads()}; '
        f'OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "unset")}; load average {os.getloadavg()[0]:.2f}')
    data = [(g.tokens('clean'), g.tokens('corrupted'), g.answer_ids, g.distractor_ids) for g in groups]
    metric = None if args.metric == 'logit_diff' else args.metric
    ours_fn = lambda c, x, a, d: per_example_patch(model, c, x, a, d, site=args.site, memory_mb=args.memory_mb, metric=metric)
    loop_fn = lambda c, x, a, d: batched_hook_loop(model, args.site, c, x, a, d, args.metric)
    tl_fn = lambda c, x, a, d: per_example_tl_loop(model, args.site, c, x, a, d, args.metric)
    sides = [('ours', ours_fn), ('batched hook loop', loop_fn)] + ([('per-example TL loop', tl_fn)] if per_example_loop else [])
    warm = tuple(t[:1] for t in data[0])
    for _, fn in sides: fn(*warm)  # warm-up: the same pair for every side
    res = timed(sides, data, args.repeats)
    ours = res['ours'][2]
    say(f'patch sites: {sum(o.numel() for o in ours)} (examples x sites; each baseline runs one forward per site and batch / example)')
    for name, (w, cpu, _) in res.items():
        say(f'{name}: {w:.3f} s wall, {cpu:.3f} s CPU (median of {args.repeats}, sides interleaved)')
    for name in [s for s, _ in sides[1:]]:
        w, cpu, outs = res[name]
        diff = max((o.cpu() - t.cpu()).abs().max().item() for o, t in zip(ours, outs))
        kind = 'batched' if name.startswith('batched') else 'per-example'
        say(f'speedup vs {kind} loop: {w / res["ours"][0]:.1f}x wall ({cpu / res["ours"][1]:.1f}x CPU)   max abs diff: {diff:.2e}')
    bound, bound_u = compute_bound(model, args.site, data, args.metric)
    w_loop, cpu_loop, _ = res['batched hook loop']
    rw, rc = w_loop / res['ours'][0], cpu_loop / res['ours'][1]
    say(f'compute bound vs the batched loop: {bound:.1f}x (layers and positions at or after each differing site); '
        f'ours reaches {rc / bound:.0%} of it (CPU), {rw / bound:.0%} (wall)')
    say(f'compute bound with the last position\'s unembedding ({args.metric}) counted on both sides: {bound_u:.1f}x; '
        f'ours reaches {rc / bound_u:.0%} of it (CPU), {rw / bound_u:.0%} (wall)')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--quick', action='store_true', help='64 pairs instead of 512 (and 8 instead of 24 on the GPT-2 shape)')
    ap.add_argument('--pairs', type=int, default=None, help='pairs on the built-in model (default 512, 64 with --quick)')
    ap.add_argument('--site', default='resid_pre', choices=list(TL_FN))
    ap.add_argument('--metric', default='logit_diff', choices=['logit_diff', 'margin'],
                    help="what every side patches on: the logit difference, or actlab.metrics.margin (the study's metric)")
    ap.add_argument('--random-model', action='store_true', help='use a random model instead of the default one')
    ap.add_argument('--memory-mb', type=float, default=256.0)
    ap.add_argument('--d-model', type=int, default=64, help='width of the random model (default: the built-in model\'s)')
    ap.add_argument('--repeats', type=int, default=3, help='runs per side; the median is reported (same for all sides)')
    ap.add_argument('--no-per-example-loop', action='store_true', help='skip the (slow) per-example TransformerLens baseline')
    ap.add_argument('--memory-check', action='store_true', help='also measure peak memory against the budget')
    shape = ap.add_mutually_exclusive_group()
    shape.add_argument('--gpt2-shape', action='store_true', help='only the GPT-2-small-shaped random model (skip the built-in model)')
    shape.add_argument('--no-gpt2-shape', action='store_true', help='only the built-in model (skip the GPT-2-small shape)')
    ap.add_argument('--gpt2-pairs', type=int, default=None, help='pairs on the GPT-2-small shape (default 8, 4 with --quick)')
    ap.add_argument('--gpt2-seq-len', type=int, default=-1,
                    help='GPT-2 shape: only pairs of this many tokens (with BOS); -1 (default): the study\'s median length; 0: any length')
    args = ap.parse_args()
    for k in ('pairs', 'gpt2_pairs', 'repeats'):
        v = getattr(args, k)
        if v is not None and v < 1: ap.error(f'--{k.replace("_", "-")} must be >= 1, got {v}')
    if args.memory_mb <= 0: ap.error(f'--memory-mb must be > 0, got {args.memory_mb}')
    if args.memory_check: memory_check()
    torch.set_grad_enabled(False)
    if not args.gpt2_shape:
        model, what = load(args.random_model, args.d_model)
        run_shape('builtin', model, what, args.pairs or (64 if args.quick else 512), args, not args.no_per_example_loop)
        del model
    if not args.no_gpt2_shape:
        model, what = load_gpt2_shape()
        run_shape('gpt2-small', model, what, args.gpt2_pairs or (4 if args.quick else 8), args, False, args.gpt2_seq_len or None)


if __name__ == '__main__':
    main()
