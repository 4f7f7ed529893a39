"Path patching: batched path_patch against the naive definition, the closed form of direct paths, flags restored, budgets."
import dataclasses

import numpy as np
import pytest
import torch

from actlab.patching import tiny_model, prompt_logit_diff
from actlab.path_patching import path_patch, path_patch_naive, senders_of, receivers_of, heatmap_paths, path_matrix
from actlab.path_patching import head_paths, reader_head_table, reader_head_claim, reader_heads_by_family, plot_reader_heads
from actlab.baseline import evaluate_pairs
from actlab.patching import degenerate_mask
from helpers import toy_batch, builtin_model, builtin_pairs, random_like

ARCHS = {
    'lnpre_alibi': dict(normalization_type='LNPre', positional_embedding_type='alibi'),
    'no_norm_3layer': dict(normalization_type=None, n_layers=3, n_heads=2),
    'rms_gqa': dict(normalization_type='RMS', n_heads=4, n_key_value_heads=1),
    'ln_rotary_attn_only': dict(attn_only=True, positional_embedding_type='rotary', rotary_dim=4),
}


def toy(model, b=3, seq=5, seed=2):
    return toy_batch(model, b, seq, seed, span=(1, 3), answer_offset=2, distractor_offset=12)


@pytest.mark.parametrize('arch', list(ARCHS))
@pytest.mark.parametrize('freeze', ['heads', 'all'])
def test_matches_the_naive_definition(arch, freeze):
    model = tiny_model(**ARCHS[arch])
    clean, corr, a, d = toy(model)
    res = path_patch(model, clean, corr, a, d, freeze=freeze, memory_mb=0.03)
    ref = path_patch_naive(model, clean, corr, a, d, freeze=freeze)
    assert res.patched.shape == (3, len(senders_of(model)), len(receivers_of(model)))
    torch.testing.assert_close(res.patched, ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(res.corrupted, prompt_logit_diff(model, corr, a, d), atol=1e-5, rtol=0)
    torch.testing.assert_close(res.clean, prompt_logit_diff(model, clean, a, d), atol=1e-5, rtol=0)


def test_paths_matter_and_freezing_matters():
    "Not vacuous: some paths move the metric, and freezing MLPs changes indirect paths but not paths into the next layer's heads from MLPs of the layer before."
    model = tiny_model(n_layers=3, d_model=32)
    clean, corr, a, d = toy(model, b=4)
    heads, alls = path_patch(model, clean, corr, a, d, freeze='heads'), path_patch(model, clean, corr, a, d, freeze='all')
    assert heads.effect.abs().max() > 1e-2
    s, r = heads.senders.index('L0H0'), heads.receivers.index('L2H0.q')
    assert (heads.patched[:, s, r] - alls.patched[:, s, r]).abs().max() > 1e-4  # MLP0 and MLP1 recompute under 'heads'
    s, r = heads.senders.index('MLP1'), heads.receivers.index('L2H1.v')
    torch.testing.assert_close(heads.patched[:, s, r], alls.patched[:, s, r], atol=1e-5, rtol=0)  # nothing in between


def test_direct_paths_to_the_final_residual_have_the_closed_form():
    model = tiny_model(n_layers=2, normalization_type='RMS')
    clean, corr, a, d = toy(model, b=4)
    res = path_patch(model, clean, corr, a, d, receivers=['resid_final'], freeze='all')
    _, cc = model.run_with_cache(clean)
    _, xc = model.run_with_cache(corr)
    for j, s in enumerate(res.senders):
        if s.startswith('MLP'):
            l = int(s[3:]); delta = cc[f'blocks.{l}.hook_mlp_out'] - xc[f'blocks.{l}.hook_mlp_out']
        else:
            l, h = map(int, s[1:].split('H'))
            delta = torch.einsum('bph,hm->bpm', cc[f'blocks.{l}.attn.hook_z'][:, :, h] - xc[f'blocks.{l}.attn.hook_z'][:, :, h], model.W_O[l, h])
        logits = model.unembed(model.ln_final(xc['blocks.1.hook_resid_post'] + delta))[:, -1]
        torch.testing.assert_close(res.patched[:, j, 0], logits[range(4), a] - logits[range(4), d], atol=1e-4, rtol=0)


def test_unreachable_paths_keep_the_corrupted_metric_and_budget_only_splits():
    model = tiny_model()
    clean, corr, a, d = toy(model, b=5)
    res = path_patch(model, clean, corr, a, d, memory_mb=64)
    for j, s in enumerate(res.senders):
        ls = int(s[3:]) if s.startswith('MLP') else int(s[1:].split('H')[0])
        for k, r in enumerate(res.receivers):
            if r != 'resid_final' and int(r[1:].split('H')[0]) <= ls:
                torch.testing.assert_close(res.patched[:, j, k], res.corrupted)
    small = path_patch(model, clean, corr, a, d, memory_mb=0.002)
    torch.testing.assert_close(small.patched, res.patched, atol=1e-5, rtol=0)


def test_flags_restored_even_when_the_metric_fails():
    model = tiny_model()
    clean, corr, a, d = toy(model)
    calls = []
    def bad(logits, idx):
        calls.append(1)
        if len(calls) > 3: raise RuntimeError('boom')
        return logits[:, -1, 0]
    with pytest.raises(RuntimeError, match='boom'):
        path_patch(model, clean, corr, metric=bad)
    assert model.cfg.use_split_qkv_input is False and model.cfg.use_attn_result is False
    custom = path_patch(model, clean, corr, metric=lambda lg, i: lg[range(len(i)), -1, a[i]] - lg[range(len(i)), -1, d[i]])
    torch.testing.assert_close(custom.patched, path_patch(model, clean, corr, a, d).patched, atol=1e-5, rtol=0)


def test_heatmap_groups_receivers_by_layer():
    model = tiny_model(n_layers=3, n_heads=2)
    clean, corr, a, d = toy(model)
    res = path_patch(model, clean, corr, a, d)
    fig = heatmap_paths(res)
    assert list(fig.data[0].x) == res.receivers and list(fig.data[0].y) == res.senders
    assert len(fig.layout.shapes) == 3  # lines between layers 0|1, 1|2 and 2|final
    np.testing.assert_allclose(np.array(fig.data[0].z, dtype=float), res.effect.mean(0).numpy(), atol=1e-6)
    r = path_matrix(res, 'rescue')
    den = (res.clean - res.corrupted)
    keep = den.abs() >= 0.1
    np.testing.assert_allclose(r, (res.effect / den[:, None, None])[keep].mean(0).numpy(), atol=1e-5)


def test_left_padded_prompts_match_the_naive_loop():
    "A tokenizer that pads on the left: forwards started mid-model get the padding mask the full forward builds."
    from actlab.tasks import build_word_tokenizer
    tok = build_word_tokenizer()
    model = tiny_model(d_vocab=len(tok), positional_embedding_type='rotary', rotary_dim=4)
    model.set_tokenizer(tok, default_padding_side='left')
    clean = model.to_tokens(['7 + 5 please now =', '3 + 4 ok ok ok ok ='])
    corr = model.to_tokens(['7 + 5 ! ; =', '3 + 4 # # # # ='])
    assert (clean == tok.pad_token_id).any()
    a, d = torch.tensor([5, 6]), torch.tensor([9, 10])
    res = path_patch(model, clean, corr, a, d)
    torch.testing.assert_close(res.patched, path_patch_naive(model, clean, corr, a, d), atol=1e-4, rtol=0)


# --- which reader heads each family breaks (head_paths, reader_head_claim) ---


@pytest.fixture(scope='module')
def builtin_heads():
    model = builtin_model()
    pairs = builtin_pairs(model, n_per_cell=6, family_kind='ood', suffix_length=[4, 8])
    return model, pairs, head_paths(model, pairs)


def test_failed_runs_are_the_baselines_failures(builtin_heads):
    "One definition: a run has a path rescue exactly when the baseline calls it clean-correct, corrupted-wrong and not degenerate."
    model, pairs, hp = builtin_heads
    s = evaluate_pairs(model, pairs).set_index('example_id').loc[hp.df.example_id]
    np.testing.assert_allclose(hp.df.metric_clean, s.margin_clean, atol=1e-4)
    np.testing.assert_allclose(hp.df.metric_corrupted, s.margin_corrupted, atol=1e-4)
    want = s.correct_clean.to_numpy() & ~s.correct_corrupted.to_numpy() & ~degenerate_mask(s.margin_clean.to_numpy(), s.margin_corrupted.to_numpy())
    assert (hp.df.failed.to_numpy() == want).all() and want.any()
    assert np.isfinite(hp.rescue[want]).all() and np.isnan(hp.rescue[~want]).all()


def test_path_rescue_is_path_patch_over_the_lost_margin(builtin_heads):
    model, pairs, hp = builtin_heads
    g = pairs.groups()[0]
    r = path_patch(model, g.tokens('clean'), g.tokens('corrupted'), g.answer_ids, None, senders=['L0H1', 'L3H2'],
                   receivers=['resid_final'], metric='margin')
    rows = hp.df.set_index('example_id').index.get_indexer(g.df.example_id)
    lost = (r.clean - r.corrupted).numpy()
    for j, h in enumerate(['L0H1', 'L3H2']):
        want = r.effect[:, j, 0].numpy() / lost
        got = hp.rescue[rows, hp.heads.index(h)]
        ok = np.isfinite(got)
        np.testing.assert_allclose(got[ok], want[ok], rtol=1e-4, atol=1e-5)


def test_reader_head_claims_fail_on_a_random_weight_model(builtin_heads):
    model, pairs, _ = builtin_heads
    hp = head_paths(random_like(model), pairs)
    claims, table = reader_heads_by_family(hp, families=sorted(set(pairs.df.corruption_type)))
    assert len(claims) == 4 and not any(c.holds for c in claims), claims
    assert table.holds.eq(False).all()


def test_reader_head_claim_fails_when_head_labels_are_shuffled(builtin_heads):
    "A check that can fail on a trained model too: with each example's head columns permuted at random, no head is special."
    _, _, hp = builtin_heads
    rng = np.random.default_rng(0)
    shuffled = dataclasses.replace(hp, rescue=np.stack([row[rng.permutation(len(row))] for row in hp.rescue]))
    for fam in sorted(set(hp.df.corruption_type)):
        assert not reader_head_claim(shuffled, fam, min_n=5).holds


def test_reader_head_table_and_plot(builtin_heads):
    _, pairs, hp = builtin_heads
    fam = 'distractor_numbers'
    t = reader_head_table(hp, fam, n_boot=200)
    fails = hp.df.failed & (hp.df.corruption_type == fam)
    assert t.n.max() == fails.sum()
    top = t.iloc[0]
    assert top.median_rescue == pytest.approx(np.median(hp.rescue[fails.to_numpy(), hp.heads.index(top['head'])]))
    assert top.lo <= top.median_rescue <= top.hi
    fig = plot_reader_heads(hp)
    assert len(fig.data) == len(set(hp.df.corruption_type[hp.df.failed]))
    with pytest.raises(ValueError, match='no_such'):
        reader_head_claim(hp, 'no_such')
