"Attribution patching: exact where the metric is linear, the QK fix against a real patched pattern, directions, verify_top, GradDrop, agreement, study wiring."
import numpy as np
import pytest
import torch

from actlab.patching import tiny_model, per_example_patch, prompt_logit_diff, PatchingConfig, sweep, patch_pairs
from actlab.attribution import attribution_patch, agreement, agreement_table, _run
from helpers import toy_batch

ALL_SITES = ('resid_pre', 'resid_mid', 'attn_out', 'mlp_out', 'head', 'head_by_pos', 'q', 'k', 'v', 'q_by_pos', 'k_by_pos', 'v_by_pos',
             'pattern', 'pattern_by_pos')


toy = toy_batch  # 4 random prompts of 6 tokens, positions 2:5 corrupted, answers 3.., distractors 11..


@pytest.mark.parametrize('arch', [dict(attn_only=True, normalization_type=None, n_layers=3, n_heads=2),
                                  dict(attn_only=True, normalization_type=None, n_heads=4, n_key_value_heads=2)])
@pytest.mark.parametrize('direction', ['denoising', 'noising'])
def test_exact_where_the_metric_is_linear(arch, direction):
    "Last-layer head outputs, values and (no final norm) the last attention output reach the logits linearly."
    model = tiny_model(**arch)
    clean, corr, a, d = toy(model)
    src, base = (clean, corr) if direction == 'denoising' else (corr, clean)
    for site in ('head', 'head_by_pos', 'v', 'v_by_pos', 'attn_out'):
        est = attribution_patch(model, clean, corr, a, d, site=site, direction=direction)
        exact = per_example_patch(model, src, base, a, d, site=site)
        torch.testing.assert_close(est[:, -1], exact[:, -1], atol=1e-4, rtol=0, msg=site)
        assert (est[:, 0] - exact[:, 0]).abs().max() > 1e-5 or site == 'attn_out'  # earlier layers: only approximately


def test_mlp_out_of_the_last_layer_is_exact_without_final_norm():
    model = tiny_model(normalization_type=None)
    clean, corr, a, d = toy(model)
    torch.testing.assert_close(attribution_patch(model, clean, corr, a, d, site='mlp_out')[:, -1],
                               per_example_patch(model, clean, corr, a, d, site='mlp_out')[:, -1], atol=1e-4, rtol=0)


def pattern_linear(m, clean, corr, a, d, act, layer, head, pos=None):
    "(P_patched - P) . dM/dP, with P_patched read from a TransformerLens forward patching `act`."
    _, cc = m.run_with_cache(clean)
    name, pname = f'blocks.{layer}.attn.hook_{act}', f'blocks.{layer}.attn.hook_pattern'
    got = {}
    def patch(x, hook):
        x = x.clone(); sl = (slice(None), slice(None) if pos is None else pos, head); x[sl] = cc[name][sl]; return x
    m.run_with_hooks(corr, fwd_hooks=[(name, patch), (pname, lambda x, hook: got.__setitem__('p', x))])
    _, base, grads = _run(m, corr, torch.arange(len(corr)), a, d, None, [pname], [pname])
    return ((got['p'] - base[pname]) * grads[pname]).flatten(1).sum(1)


@pytest.mark.parametrize('arch', [dict(normalization_type='LNPre', positional_embedding_type='shortformer'),
                                  dict(normalization_type='RMS', positional_embedding_type='rotary', rotary_dim=4, n_key_value_heads=2),
                                  dict(positional_embedding_type='alibi', n_layers=3)])
def test_qk_fix_recomputes_the_pattern_exactly(arch):
    model = tiny_model(**arch)
    clean, corr, a, d = toy(model)
    base = prompt_logit_diff(model, corr, a, d)
    kv = model.cfg.n_key_value_heads or model.cfg.n_heads
    for layer in (0, model.cfg.n_layers - 1):
        for site, act, head, pos in [('q', 'q', 1, None), ('q_by_pos', 'q', 0, 3), ('k', 'k', kv - 1, None), ('k_by_pos', 'k', 0, 2),
                                     ('k_by_pos', 'k', 0, 5)]:
            est = attribution_patch(model, clean, corr, a, d, site=site)
            idx = (slice(None), layer, head) if pos is None else (slice(None), layer, pos, head)
            want = pattern_linear(model, clean, corr, a, d, act, layer, head, pos)  # under GQA a key head moves its whole group
            torch.testing.assert_close(est[idx] - base, want, atol=1e-4, rtol=0, msg=f'{site} L{layer} h{head} p{pos}')
    plain = attribution_patch(model, clean, corr, a, d, site='q', qk_fix=False)
    assert (plain - attribution_patch(model, clean, corr, a, d, site='q')).abs().max() > 1e-6


@pytest.mark.parametrize('site', ALL_SITES)
def test_noising_is_denoising_with_roles_swapped_and_shapes_match(site):
    model = tiny_model(n_heads=4, n_key_value_heads=2)
    clean, corr, a, d = toy(model)
    n = attribution_patch(model, clean, corr, a, d, site=site, direction='noising')
    torch.testing.assert_close(n, attribution_patch(model, corr, clean, a, d, site=site), atol=1e-6, rtol=0)
    assert n.shape == per_example_patch(model, clean, corr, a, d, site=site).shape
    assert torch.isfinite(n).all()


def test_verify_top_reruns_exactly_the_top_sites():
    model = tiny_model(n_layers=3)
    clean, corr, a, d = toy(model, b=5)
    base = prompt_logit_diff(model, corr, a, d)
    plain = attribution_patch(model, clean, corr, a, d, site='resid_pre')
    exact = per_example_patch(model, clean, corr, a, d, site='resid_pre')
    ver = attribution_patch(model, clean, corr, a, d, site='resid_pre', verify_top=4)
    top = (plain - base[:, None, None]).abs().flatten(1).topk(4, 1).indices
    mask = torch.zeros(5, 18, dtype=torch.bool).scatter_(1, top, True).view_as(plain)
    torch.testing.assert_close(ver[mask], exact[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(ver[~mask], plain[~mask], atol=0, rtol=0)


def test_grad_drop():
    model = tiny_model(n_layers=3)
    clean, corr, a, d = toy(model)
    plain = attribution_patch(model, clean, corr, a, d, site='head')
    gd = attribution_patch(model, clean, corr, a, d, site='head', grad_drop=True)
    base = prompt_logit_diff(model, corr, a, d)[:, None, None]
    assert torch.equal(torch.sign(gd - base)[plain != base], torch.sign(plain - base)[plain != base])
    # the last layer's heads: dropping layer 0 or 1 leaves their gradient, dropping layer 2 zeroes it -> 2|AtP| / (L - 1) = |AtP|
    torch.testing.assert_close(gd[:, 2], plain[:, 2], atol=1e-5, rtol=0)
    assert (gd[:, 0] - plain[:, 0]).abs().max() > 1e-6  # earlier layers do change


def test_agreement_beats_a_shuffled_control_on_a_random_model():
    model = tiny_model(n_layers=3, d_model=32, n_heads=4, d_vocab=40, seed=11)
    tab = agreement_table(model, [toy(model, b=6, seq=7, seed=1), toy(model, b=4, seq=9, seed=2)],
                          ('resid_pre', 'mlp_out', 'head_by_pos', 'q', 'k_by_pos', 'v', 'pattern_by_pos'), n_shuffles=5)
    assert (tab.spearman > tab.shuffled_spearman_max).all(), tab
    assert (tab.fnr < tab.shuffled_fnr_min).all(), tab


def test_agreement_reports_a_bad_estimate():
    x = torch.randn(3, 2, 10, generator=torch.Generator().manual_seed(0))
    c = torch.zeros(3)
    assert agreement(x, x, c)['spearman'] == pytest.approx(1.0) and agreement(x, x, c)['fnr'] == 0
    assert agreement(torch.randn(3, 2, 10, generator=torch.Generator().manual_seed(1)), x, c)['spearman'] < 0.5


def test_bad_input():
    model = tiny_model()
    clean, corr, a, d = toy(model)
    with pytest.raises(ValueError, match='direction must be one of'):
        attribution_patch(model, clean, corr, a, d, direction='both')
    with pytest.raises(ValueError, match='verify_top must be >= 0'):
        attribution_patch(model, clean, corr, a, d, verify_top=-1)
    with pytest.raises(ValueError, match="did you mean 'head'"):
        attribution_patch(model, clean, corr, a, d, site='heads')
    with pytest.raises(ValueError, match='answer_ids has 3 entries'):
        attribution_patch(model, clean, corr, a[:3], d)


def test_patch_pairs_with_atp_methods():
    from actlab.tasks import TaskConfig, make_pairs, build_word_tokenizer
    tok = build_word_tokenizer()
    model = tiny_model(d_model=32, d_vocab=len(tok))
    model.set_tokenizer(tok, default_padding_side='right')
    pairs = make_pairs(TaskConfig(n_per_cell=2, suffix_lengths=(1,)), tok)
    cfg = PatchingConfig(sites=('resid_pre', 'head'), methods={'resid_pre': 'atp_verify', 'head': 'atp'}, verify_top=2)
    res = patch_pairs(model, pairs, cfg)
    assert len(res.df) == len(pairs)
    g, gr = pairs.groups()[0], res.groups[0]
    args = (model, g.tokens('clean'), g.tokens('corrupted'), g.answer_ids, g.distractor_ids)
    np.testing.assert_allclose(gr.sweep.patched['head'], attribution_patch(*args, site='head', metric='margin').numpy(), atol=1e-5)
    np.testing.assert_allclose(gr.sweep.patched['resid_pre'], attribution_patch(*args, site='resid_pre', verify_top=2, metric='margin').numpy(), atol=1e-5)
    assert gr.sweep.methods == {'resid_pre': 'atp_verify', 'head': 'atp'}
    # the metric and direction are the config's: the logit difference, noising
    res = patch_pairs(model, pairs, cfg.replace(metric='logit_diff', direction='noising'))
    gr = res.groups[0]
    np.testing.assert_allclose(gr.sweep.patched['head'], attribution_patch(*args, site='head', direction='noising').numpy(), atol=1e-5)
    assert res.metric == 'logit_diff' and set(res.df.direction) == {'noising'}


def test_left_padded_prompts_qk_fix():
    "With left padding the recomputed scores use the same padding mask as the forward (checked against a real patched pattern)."
    from actlab.tasks import build_word_tokenizer
    tok = build_word_tokenizer()
    model = tiny_model(d_vocab=len(tok), positional_embedding_type='rotary', rotary_dim=4)
    model.set_tokenizer(tok, default_padding_side='left')
    clean = model.to_tokens(['7 + 5 please now =', '3 + 4 ok ok ok ok ='])
    corr = model.to_tokens(['7 + 5 ! ; =', '3 + 4 # # # # ='])
    a, d = torch.tensor([5, 6]), torch.tensor([9, 10])
    base = prompt_logit_diff(model, corr, a, d)
    for site, act, head, pos in [('q', 'q', 1, None), ('k_by_pos', 'k', 2, 5)]:
        est = attribution_patch(model, clean, corr, a, d, site=site)
        idx = (slice(None), 1, head) if pos is None else (slice(None), 1, pos, head)
        torch.testing.assert_close(est[idx] - base, pattern_linear(model, clean, corr, a, d, act, 1, head, pos), atol=1e-4, rtol=0)
