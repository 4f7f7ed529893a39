"Integration tests for actlab.patching: equality with TransformerLens, per-example sweeps, rescue guard, PairSet driver."
import inspect
from functools import partialmethod

import numpy as np
import pandas as pd
import pytest
import torch
from tqdm.auto import tqdm

tqdm.__init__ = partialmethod(tqdm.__init__, disable=True)

import transformer_lens.patching as TLP
import actlab.patching as P
from actlab.patching import (PatchingConfig, per_example_patch, sweep, classify, patch_pairs, rescue_scores, memory_budget,
                             tiny_model, heatmap_layer_pos, heatmap_layer_head, heatmap_layer_pos_by_family,
                             heatmap_layer_head_by_family, PATCH_CLASSES)
from actlab.tasks import TaskConfig, make_pairs, build_word_tokenizer, PairSet
from helpers import token_pair, mean_logit_diff

DROP_INS = ['get_act_patch_resid_pre', 'get_act_patch_resid_mid', 'get_act_patch_attn_out', 'get_act_patch_mlp_out',
            'get_act_patch_attn_head_out_all_pos', 'get_act_patch_attn_head_out_by_pos', 'get_act_patch_block_every']
ARCHS = {
    'ln_standard_4h': dict(),
    'lnpre_rotary_2h': dict(normalization_type='LNPre', positional_embedding_type='rotary', rotary_dim=4, n_heads=2),
    'ln_shortformer_1h': dict(positional_embedding_type='shortformer', n_heads=1),
    'rms_3layer_8h': dict(normalization_type='RMS', n_layers=3, n_heads=8, d_model=32),
    'attn_only_3layer': dict(attn_only=True, n_layers=3, n_heads=8),
}


batch, ld_metric = token_pair, mean_logit_diff


@pytest.mark.parametrize('arch', list(ARCHS))
def test_drop_ins_match_transformer_lens(arch):
    model = tiny_model(**ARCHS[arch])
    clean, corrupted = batch(model)
    _, cache = model.run_with_cache(clean)
    metric = ld_metric(torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]))
    for name in DROP_INS:
        if model.cfg.attn_only and any(s in name for s in ('mlp', 'resid_mid', 'block_every')):
            continue
        with memory_budget(0.02):  # forces several chunks per layer
            ours = getattr(P, name)(model, corrupted, cache, metric)
        theirs = getattr(TLP, name)(model, corrupted, cache, metric)
        assert ours.shape == theirs.shape, name
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0, msg=f'{arch} {name}')


def test_signatures_match_transformer_lens():
    for name in DROP_INS + ['generic_activation_patch']:
        ours, theirs = inspect.signature(getattr(P, name)), inspect.signature(getattr(TLP, name))
        assert [(p.name, p.kind) for p in ours.parameters.values()] == [(p.name, p.kind) for p in theirs.parameters.values()], name
        for p in theirs.parameters.values():
            if p.default is not inspect.Parameter.empty and not callable(p.default):
                assert ours.parameters[p.name].default == p.default, (name, p.name)


@pytest.mark.parametrize('arch', ['ln_standard_4h', 'lnpre_rotary_2h', 'ln_shortformer_1h', 'rms_3layer_8h'])
def test_per_example_matches_transformer_lens_per_prompt(arch):
    model = tiny_model(**ARCHS[arch])
    clean, corrupted = batch(model, b=4)
    a, d = torch.tensor([3, 4, 5, 6]), torch.tensor([7, 8, 9, 10])
    pairs = [('resid_pre', 'get_act_patch_resid_pre'), ('resid_mid', 'get_act_patch_resid_mid'), ('attn_out', 'get_act_patch_attn_out'),
             ('mlp_out', 'get_act_patch_mlp_out'), ('head', 'get_act_patch_attn_head_out_all_pos'),
             ('head_by_pos', 'get_act_patch_attn_head_out_by_pos')]
    for site, tl_name in pairs:
        ours = per_example_patch(model, clean, corrupted, a, d, site=site, memory_mb=0.01)
        for i in range(len(clean)):
            _, cache = model.run_with_cache(clean[i:i + 1])
            theirs = getattr(TLP, tl_name)(model, corrupted[i:i + 1], cache, ld_metric(a[i:i + 1], d[i:i + 1]))
            torch.testing.assert_close(ours[i], theirs, atol=1e-4, rtol=0, msg=f'{arch} {site} {i}')



@pytest.mark.parametrize('arch', ['ln_standard_4h', 'lnpre_rotary_2h', 'rms_3layer_8h'])
def test_margin_matches_transformer_lens_per_prompt(arch):
    "metric='margin' (the study's) equals TransformerLens on each prompt alone with actlab.metrics.margin as its metric."
    from actlab import metrics as M
    model = tiny_model(**ARCHS[arch])
    clean, corrupted = batch(model, b=4)
    a = torch.tensor([3, 4, 5, 6])
    for site, tl_name in [('resid_pre', 'get_act_patch_resid_pre'), ('head_by_pos', 'get_act_patch_attn_head_out_by_pos'),
                          ('mlp_out', 'get_act_patch_mlp_out')]:
        ours = per_example_patch(model, clean, corrupted, a, site=site, metric='margin', memory_mb=0.01)
        for i in range(len(clean)):
            _, cache = model.run_with_cache(clean[i:i + 1])
            theirs = getattr(TLP, tl_name)(model, corrupted[i:i + 1], cache, lambda lg, i=i: M.margin(lg[:, -1], a[i:i + 1])[0])
            torch.testing.assert_close(ours[i], theirs, atol=1e-4, rtol=0, msg=f'{arch} {site} {i}')


def test_margin_sweep_starts_at_the_first_changed_position():
    "Under metric='margin' a patch's forward skips the positions before the first one it changes, as for the logit difference."
    model = tiny_model(n_layers=3)
    clean, corrupted = batch(model, b=4, seq=9, span=(5, 7))  # clean and corrupted agree on positions 0..4
    a, d = torch.arange(4), torch.arange(4) + 4
    widths = {}
    for metric in (None, 'margin', lambda lg, i: P.resolve_metric('margin', a, None)(lg, i)):  # the last: a plain callable
        seen = []
        model.hook_dict['blocks.2.hook_resid_pre'].add_perma_hook(lambda x, hook: seen.append(x.shape[1]))
        try:
            per_example_patch(model, clean, corrupted, a, d, site='resid_pre', metric=metric, memory_mb=64)
        finally:
            model.reset_hooks(including_permanent=True)
        widths[metric if isinstance(metric, (str, type(None))) else 'callable'] = seen
    assert min(widths[None]) < clean.shape[1] and widths['margin'] == widths[None]
    assert set(widths['callable']) == {clean.shape[1]}  # a metric that may read any position gets whole-sequence forwards

def test_budget_changes_split_not_result():
    model = tiny_model()
    clean, corrupted = batch(model, b=6)
    a, d = torch.arange(6), torch.arange(6) + 6
    full = per_example_patch(model, clean, corrupted, a, d, memory_mb=512)
    assert P.rows_per_chunk(model, 7, 0.003) < 6
    torch.testing.assert_close(per_example_patch(model, clean, corrupted, a, d, memory_mb=0.003), full, atol=1e-5, rtol=0)


def test_forwards_respect_the_row_budget(monkeypatch):
    model = tiny_model()
    clean, corrupted = batch(model, b=8)
    a, d = torch.arange(8), torch.arange(8) + 8
    seen = []
    orig = model.forward
    def spy(inp, *args, **kw):
        seen.append(inp.shape[0]); return orig(inp, *args, **kw)
    monkeypatch.setattr(model, 'forward', spy)
    budget = 0.004
    rows = P.rows_per_chunk(model, 7, budget)
    per_example_patch(model, clean, corrupted, a, d, memory_mb=budget)
    assert seen and max(seen) <= rows


def test_bad_input_errors_name_the_fix():
    model = tiny_model()
    clean, corrupted = batch(model)
    _, cache = model.run_with_cache(clean)
    a, d = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    with pytest.raises(ValueError, match='PairSet.groups'):
        per_example_patch(model, clean, corrupted[:, :6], a, d)
    with pytest.raises(ValueError, match='batch sizes differ'):
        per_example_patch(model, clean[:2], corrupted, a, d)
    with pytest.raises(ValueError, match='batch sizes differ'):
        P.get_act_patch_resid_pre(model, corrupted[:2], cache, ld_metric(a[:2], d[:2]))
    with pytest.raises(ValueError, match='equal token lengths'):
        P.get_act_patch_resid_pre(model, torch.cat([corrupted, corrupted[:, :2]], 1), cache, ld_metric(a, d))  # corrupted longer
    with pytest.raises(ValueError, match=r"closest hook names: \['blocks.0.hook_resid_pre'"):
        P.generic_activation_patch(model, corrupted, cache, ld_metric(a, d), TLP.layer_pos_patch_setter, 'resid_pree',
                                   index_axis_names=('layer', 'pos'))
    with pytest.raises(ValueError, match="did you mean 'attn_out'"):
        per_example_patch(model, clean, corrupted, a, d, site='attn_outt')
    with pytest.raises(ValueError, match='one number per batch'):
        P.get_act_patch_resid_pre(model, corrupted, cache, lambda logits: logits[:, -1, 0])
    with pytest.raises(ValueError, match='one value per prompt'):
        per_example_patch(model, clean, corrupted, metric=lambda logits, idx: logits[:, -1, 0].sum())
    with pytest.raises(ValueError, match='answer_ids has 2 entries'):
        sweep(model, clean, corrupted, a[:2], d)


def test_rescue_guard_flags_and_keeps_degenerate():
    r, deg = rescue_scores(np.array([[1.0, 3.0], [9.0, 9.0]]), np.array([3.0, 1.0]), np.array([1.0, 1.0 + 1e-9]), eps=1e-3)
    np.testing.assert_allclose(r[0], [0.0, 1.0])
    assert deg.tolist() == [False, True] and np.isnan(r[1]).all()


def test_rescue_guard_is_relative():
    "A gap of 0.5 next to a clean metric of 7 is degenerate at rel=0.1 (threshold 0.7); an absolute 0.1 guard would keep it."
    clean, corrupted = np.array([7.0, 7.0, 2.0]), np.array([6.5, 6.0, 1.5])
    _, deg = rescue_scores(np.zeros((3, 1)), clean, corrupted, eps=0.1, rel=0.1)
    assert deg.tolist() == [True, False, False]
    _, deg = rescue_scores(np.zeros((3, 1)), clean, corrupted, eps=0.1, rel=0.0)
    assert deg.tolist() == [False, False, False]
    # degenerate examples are kept (flagged, NaN), never dropped, in patch_pairs
    tok = build_word_tokenizer()
    model = tiny_model(d_model=32, d_vocab=len(tok)); model.set_tokenizer(tok, default_padding_side='right')
    pairs = make_pairs(TaskConfig(families=('junk_words',), n_per_cell=3, suffix_lengths=(1,)), tok)
    res = patch_pairs(model, pairs, PatchingConfig(sites=('resid_pre',), degenerate_rel=0.99))
    assert len(res.df) == len(pairs)
    m = res.df.degenerate & res.df.survives.eq(False) & res.df.clean_correct
    assert (res.df.rescue_na[m] == 'degenerate').all() and res.df.rescue_score[res.df.degenerate].isna().all()


def test_noising_patches_corrupted_into_clean():
    model = tiny_model()
    clean, corrupted = batch(model, b=4)
    a, d = torch.arange(4), torch.arange(4) + 4
    res = sweep(model, clean, corrupted, a, d, PatchingConfig(sites=('resid_pre',), direction='noising'))
    np.testing.assert_allclose(res.patched['resid_pre'], per_example_patch(model, corrupted, clean, a, site='resid_pre', metric='margin').numpy(), atol=1e-4)
    assert res.direction == 'noising'
    # an unchanged position (the first token is shared) gives the clean run's metric back
    np.testing.assert_allclose(res.patched['resid_pre'][:, 0, 0], res.margin_clean, atol=1e-4)
    # rescue = (clean - patched) / (clean - corrupted), n/a unless the corrupted run failed and the clean one is right
    r, _ = rescue_scores(res.patched['resid_pre'], res.margin_clean, res.margin_corrupted, direction='noising')
    ok = res.rescue_na == ''
    np.testing.assert_allclose(res.rescue['resid_pre'][ok], r[ok])
    assert np.isnan(res.rescue['resid_pre'][~ok]).all()


@pytest.fixture(scope='module')
def small_study():
    tok = build_word_tokenizer()
    model = tiny_model(d_model=32, d_vocab=len(tok))
    model.set_tokenizer(tok, default_padding_side='right')
    pairs = make_pairs(TaskConfig(n_per_cell=3, suffix_lengths=(1, 2)), tok)
    return model, pairs, patch_pairs(model, pairs, PatchingConfig(memory_mb=1))


def test_patch_pairs_one_row_per_example(small_study):
    model, pairs, res = small_study
    assert len(res.df) == len(pairs) and sorted(res.df.example_id) == sorted(pairs.df.example_id)
    assert set(res.df.patch_class) <= set(PATCH_CLASSES)
    for col in ['example_id', 'logit_diff_clean', 'logit_diff_corrupted', 'best_patch_site', 'rescue_score', 'degenerate', 'patch_class']:
        assert col in res.df
    ok = res.df[res.df.rescue_na == '']
    assert ok.best_patch_site.str.match(r'^blocks\.\d+\.(hook_resid_pre@pos\d+|hook_attn_out@pos\d+|hook_mlp_out@pos\d+|attn\.hook_z@head\d+)$').all()
    s = res.summary()
    assert s['n'].sum() == len(pairs)
    assert (s[list(PATCH_CLASSES)].sum(axis=1) == s['n']).all()
    # logit differences agree with a plain forward
    g = pairs.groups()[0]
    logits = model(g.tokens('corrupted'))[:, -1]
    ld = (logits.gather(1, g.answer_ids[:, None]) - logits.gather(1, g.distractor_ids[:, None]))[:, 0].detach().numpy()
    row = res.df.set_index('example_id').loc[g.df.example_id]
    np.testing.assert_allclose(row.logit_diff_corrupted.to_numpy(), ld, atol=1e-4)
    # survives is argmax correctness of the corrupted run (by hand), and the metric is recorded
    assert row.survives.tolist() == (logits.argmax(-1) == g.answer_ids).tolist()
    top2 = logits.topk(2, dim=-1).values
    ans = logits.gather(1, g.answer_ids[:, None])[:, 0]
    margin = torch.where(logits.argmax(-1) == g.answer_ids, ans - top2[:, 1], ans - top2[:, 0]).detach().numpy()
    np.testing.assert_allclose(row.margin_corrupted.to_numpy(), margin, atol=1e-4)
    assert set(res.df.metric) == {'margin'} and res.metric == 'margin'
    assert res.df.rescue_score[res.df.rescue_na != ''].isna().all()


def test_patch_class_order_and_thresholds():
    model = tiny_model(n_layers=2)
    res = P.SweepResult(
        ld_clean=np.array([3.0, 3.0, 3.0, 3.0]), ld_corrupted=np.array([0.5, -1.0, -1.0, -1.0]), patched={},
        rescue={'resid_pre': np.array([[[0, 0], [0, 0]], [[0.2, 0], [0, 0.9]], [[0.7, 0], [0, 0]], [[0, 0], [0, 0.1]]], float),
                'attn_out': np.array([[[0, 0], [0, 0]], [[0, 0.6], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]], float)},
        degenerate=np.zeros(4, bool), margin_clean=np.full(4, 3.0), margin_corrupted=np.array([0.5, -1.0, -1.0, -1.0]))
    tab = classify(model, res, PatchingConfig(rescue_threshold=0.5))
    assert tab.patch_class.tolist() == ['survives', 'rescued_attn', 'rescued_early_resid', 'unrescued']
    assert tab.best_patch_site[1] == 'blocks.1.hook_resid_pre@pos1'
    assert np.isnan(tab.rescue_score[0]) and tab.rescue_na[0] == 'survived' and tab.best_patch_site[0] == ''  # n/a: it did not fail
    tab = classify(model, res, PatchingConfig(rescue_threshold=0.5, class_priority=('late_resid', 'early_resid', 'head', 'attn', 'mlp')))
    assert tab.patch_class[1] == 'rescued_late_resid'


def test_survives_is_argmax_not_the_distractor():
    "An example whose answer beats the distractor but loses to a third token does not survive (the old definition said it did)."
    model = tiny_model(n_layers=2)
    res = P.SweepResult(ld_clean=np.array([3.0, 3.0]), ld_corrupted=np.array([1.0, 1.0]), patched={},
                        rescue={'resid_pre': np.zeros((2, 2, 2))}, degenerate=np.zeros(2, bool),
                        margin_clean=np.array([3.0, 3.0]), margin_corrupted=np.array([-0.5, 0.5]))
    tab = classify(model, res)
    assert tab.survives.tolist() == [False, True]


def test_heatmaps(small_study):
    model, pairs, res = small_study
    fig = heatmap_layer_pos(res, 'resid_pre', family='junk_words', suffix_length=2)
    mean = np.array(fig.data[0].z, dtype=float)
    assert mean.shape[0] == model.cfg.n_layers
    from actlab.tasks import SUFFIX_FAMILIES
    assert any(t.split(':', 1)[1] in SUFFIX_FAMILIES['junk_words'] for t in fig.data[0].x)  # tick labels: a junk_words example's tokens
    assert 'token' in fig.data[0].hovertemplate
    fig = heatmap_layer_head(res, family='junk_words')
    assert np.array(fig.data[0].z, dtype=float).shape == (model.cfg.n_layers, model.cfg.n_heads)
    with pytest.raises(ValueError, match='not a layer x position site'):
        heatmap_layer_pos(res, 'head')
    fams = sorted(pairs.df.corruption_type.unique())
    fig = heatmap_layer_pos_by_family(res, 'attn_out', suffix_length=1)
    assert len(fig.data) == 2 * len(fams)
    # the mean panel of one family equals the nan-mean over that family's examples (all one length at suffix 1 per template)
    fig = heatmap_layer_head_by_family(res, kind='patched')  # (rescue is n/a on this random model: no clean run is right)
    assert len(fig.data) == 2 * len(fams)
    ids = set(res.df.example_id[res.df.corruption_type == fams[0]])
    arr = np.concatenate([g.sweep.patched['head'][[e in ids for e in g.example_ids]] for g in res.groups])
    np.testing.assert_allclose(np.array(fig.data[0].z, dtype=float), np.nanmean(arr, 0), atol=1e-9)


def test_left_padded_prompts_match_transformer_lens():
    "A tokenizer that pads on the left makes TransformerLens build an attention mask; forwards started mid-model get it too."
    tok = build_word_tokenizer()
    model = tiny_model(d_vocab=len(tok), positional_embedding_type='rotary', rotary_dim=4)
    model.set_tokenizer(tok, default_padding_side='left')
    clean = model.to_tokens(['7 + 5 please now =', '3 + 4 ok ok ok ok ='])
    corrupted = model.to_tokens(['7 + 5 ! ; =', '3 + 4 # # # # ='])
    assert (clean == tok.pad_token_id).any()
    _, cache = model.run_with_cache(clean)
    metric = lambda logits: (logits[:, -1, 5] - logits[:, -1, 9]).mean()
    for name in ['get_act_patch_resid_pre', 'get_act_patch_attn_head_out_all_pos']:
        torch.testing.assert_close(getattr(P, name)(model, corrupted, cache, metric), getattr(TLP, name)(model, corrupted, cache, metric),
                                   atol=1e-4, rtol=0)
    ours = per_example_patch(model, clean, corrupted, torch.tensor([5, 5]), torch.tensor([9, 9]))
    _, cache0 = model.run_with_cache(clean[1:2])
    theirs = TLP.get_act_patch_resid_pre(model, corrupted[1:2], cache0, lambda lg: lg[0, -1, 5] - lg[0, -1, 9])
    torch.testing.assert_close(ours[1], theirs, atol=1e-4, rtol=0)


def test_layers_before_the_patch_are_not_recomputed():
    "Block 0 sees only the cached clean+corrupted run and the layer-0 patches; later-layer patches start after it."
    model = tiny_model(n_layers=3)
    clean, corrupted = batch(model, b=4)
    a, d = torch.arange(4), torch.arange(4) + 4
    seen = {0: 0, 2: 0}
    for l in seen:
        model.hook_dict[f'blocks.{l}.hook_resid_pre'].add_perma_hook(lambda x, hook, l=l: seen.__setitem__(l, seen[l] + x.shape[0]))
    try:
        per_example_patch(model, clean, corrupted, a, d, site='resid_pre', memory_mb=64)
    finally:
        model.reset_hooks(including_permanent=True)
    n_diff = int((clean != corrupted).sum())  # layer-0 patches that change something: the differing tokens
    assert seen[0] == 2 * len(clean) + n_diff
    assert seen[2] > seen[0]  # every patch, whatever its layer, passes the last block


def test_default_model_matches_transformer_lens():
    "On the built-in model (when it has been trained; loading it otherwise would train it) and the study's pairs."
    from actlab.models import load_model, data_dir, DEFAULT_MODEL_DIR
    if not (data_dir() / DEFAULT_MODEL_DIR / 'config.json').exists():
        pytest.skip('the built-in model is not trained yet')
    model = load_model()
    pairs = make_pairs(TaskConfig(), model.tokenizer).filter(corruption_type='punctuation', suffix_length=4)
    g = pairs.groups()[0]
    g = PairSet(g.df.head(6).reset_index(drop=True), g.tokenizer, g.cfg)
    clean, corrupted, a, d = g.tokens('clean'), g.tokens('corrupted'), g.answer_ids, g.distractor_ids
    _, cache = model.run_with_cache(clean)
    metric = ld_metric(a, d)
    for name in DROP_INS:
        torch.testing.assert_close(getattr(P, name)(model, corrupted, cache, metric), getattr(TLP, name)(model, corrupted, cache, metric),
                                   atol=1e-4, rtol=0, msg=name)
    ours = per_example_patch(model, clean, corrupted, a, d, site='resid_pre')
    for i in range(len(g)):
        _, c1 = model.run_with_cache(clean[i:i + 1])
        theirs = TLP.get_act_patch_resid_pre(model, corrupted[i:i + 1], c1, ld_metric(a[i:i + 1], d[i:i + 1]))
        torch.testing.assert_close(ours[i], theirs, atol=1e-4, rtol=0)


def test_qkv_relayout_changes_no_bit_of_a_sweep(monkeypatch):
    """`per_example_patch` stores W_Q/W_K/W_V as the matrices TransformerLens's attention builds each forward (a view
    instead of a copy). Every sweep, on both sites and metrics, equals the sweep without it bit for bit, and the
    weights' storage is back afterwards."""
    import contextlib
    m = P.tiny_model(n_layers=2, d_model=32, n_heads=4, d_vocab=50)
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 50, (6, 7), generator=g); corr = clean.clone(); corr[:, 3:6] = torch.randint(0, 50, (6, 3), generator=g)
    a, d = torch.arange(6), torch.arange(6) + 10
    layout = lambda: [(b.attn.W_K.data_ptr(), b.attn.W_K.stride()) for b in m.blocks]
    before = layout()
    runs = lambda: [per_example_patch(m, clean, corr, a, d, site=s, metric=mt) for s in ('resid_pre', 'head_by_pos') for mt in (None, 'margin')]
    with_relayout = runs()
    assert layout() == before
    monkeypatch.setattr(P, 'qkv_as_linear', lambda model: contextlib.nullcontext(model))
    for x, y in zip(with_relayout, runs()): assert torch.equal(x, y)
