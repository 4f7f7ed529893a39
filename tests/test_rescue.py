"Tests for actlab.rescue: distinct patches, median ranking with problem-clustered intervals, and the site-selection claim."
import copy
from functools import partialmethod

import numpy as np
import pandas as pd
import pytest
import torch
from tqdm.auto import tqdm

tqdm.__init__ = partialmethod(tqdm.__init__, disable=True)

from transformer_lens import HookedTransformer
from actlab.metrics import bootstrap_ci, split_halves
from actlab.patching import PatchingConfig, patch_pairs, tiny_model
from actlab.rescue import site_matrix, site_aliases, site_table, top_sites, site_rescue_claim, eligible
from actlab.tasks import TaskConfig, make_pairs, build_word_tokenizer


@pytest.fixture(scope='module')
def builtin():
    from actlab.models import load_model, data_dir, DEFAULT_MODEL_DIR
    if not (data_dir() / DEFAULT_MODEL_DIR / 'config.json').exists():
        pytest.skip('the built-in model is not shipped in this checkout')
    model = load_model('builtin', device='cpu')
    pairs = make_pairs(TaskConfig(n_per_cell=8), model.tokenizer)
    return model, pairs, patch_pairs(model, pairs, PatchingConfig())


def test_aliases_structural_equivalences():
    "resid_mid(L) == resid_pre(L+1) always; attn_out(0) == resid_mid(0) where the token is shared; different patches stay apart."
    tok = build_word_tokenizer()
    model = tiny_model(n_layers=3, d_model=32, d_vocab=len(tok)); model.set_tokenizer(tok, default_padding_side='right')
    pairs = make_pairs(TaskConfig(families=('junk_words', 'punctuation'), suffix_lengths=(2,), n_per_cell=4), tok)
    res = patch_pairs(model, pairs, PatchingConfig(sites=('resid_pre', 'resid_mid', 'attn_out', 'mlp_out')))
    c = dict(zip(res.aliases.label, res.aliases.canonical))
    for L in range(2):
        for p in (-1, -2, -3):
            assert c[f'blocks.{L}.hook_resid_mid@pos{p}'] == c[f'blocks.{L + 1}.hook_resid_pre@pos{p}']
    assert c['blocks.0.hook_resid_mid@pos-1'] == 'blocks.0.hook_attn_out@pos-1'  # the cue token is shared
    # inside the suffix the tokens differ, so the stream entering block 0 is a patch of its own, unlike any later one
    assert c['blocks.0.hook_resid_pre@pos-2'] == 'blocks.0.hook_resid_pre@pos-2'
    assert c['blocks.2.hook_attn_out@pos-1'] != c['blocks.2.hook_mlp_out@pos-1']
    # the table has one row per distinct patch, and the aliases' patched metrics really are equal
    keys, V, _ = site_matrix(res, 'patched')
    j = {l: i for i, l in enumerate(keys.label)}
    for a, b in c.items():
        np.testing.assert_allclose(V[:, j[a]], V[:, j[b]], atol=1e-4)
    t = site_table(res, family_kind=None, n_boot=0)
    assert t.label.is_unique and set(t.label) == set(res.aliases.canonical)


def test_random_weights_claim_does_not_hold():
    "A random HookedTransformer with the built-in model's config and tokenizer: the site claim returns 'does not hold'."
    from actlab.models import load_model, data_dir, DEFAULT_MODEL_DIR
    if not (data_dir() / DEFAULT_MODEL_DIR / 'config.json').exists():
        pytest.skip('the built-in model is not shipped in this checkout')
    ref = load_model('builtin', device='cpu')
    model = HookedTransformer(type(ref.cfg)(**{**ref.cfg.to_dict(), 'seed': 1})).eval()
    model.set_tokenizer(ref.tokenizer, default_padding_side='right')
    pairs = make_pairs(TaskConfig(n_per_cell=4), ref.tokenizer)
    res = patch_pairs(model, pairs, PatchingConfig())
    for site in (None, 'head'):
        claim = site_rescue_claim(res, site=site)
        assert claim.holds is False
    # why: a random network gets (almost) no clean problem right, so no failure is there to rescue
    assert claim.evidence['n_scoring_failed'] < claim.evidence['min_n']
    assert (res.df.rescue_na == 'clean_wrong').mean() > 0.9


def test_claim_does_not_hold_when_sites_are_exchangeable(builtin):
    """A permutation null: each failure's head rescues shuffled among the heads (independently per example) keep every
    number but break any head's identity. Selecting on one half and scoring on the other then finds nothing."""
    model, pairs, res = builtin
    null = copy.deepcopy(res)
    rng = np.random.default_rng(0)
    for gr in null.groups:
        r = gr.sweep.rescue['head']
        flat = r.reshape(len(r), -1)
        for i in range(len(flat)): flat[i] = flat[i, rng.permutation(flat.shape[1])]
        gr.sweep.rescue['head'] = flat.reshape(r.shape)
    claim = site_rescue_claim(null, site='head')
    assert claim.evidence['n_scoring_failed'] >= claim.evidence['min_n']  # enough failures: the verdict is the interval's
    assert claim.holds is False
    s = claim.evidence['sites'][0]
    assert s['difference_ci'][0] <= 0 <= s['difference_ci'][1] or s['difference_ci'][1] < 0


def test_builtin_claim_and_ranking(builtin):
    "On the built-in model the top head (chosen on half the problems) rescues the other half's OOD failures more than a random head."
    model, pairs, res = builtin
    claim = site_rescue_claim(res, site='head')
    s = claim.evidence['sites'][0]
    assert claim.holds == (s['n'] >= 10 and s['difference_ci'][0] > 0)
    assert claim.holds, claim
    # the scoring half never shares a problem with the selection half, and only OOD failures are scored
    half = split_halves(res.df.problem_id)
    assert not set(res.df.problem_id[half]) & set(res.df.problem_id[~half])
    assert claim.evidence['n_scoring_failed'] == int(eligible(res, 'ood', res.df.example_id[~half]).sum())
    # ranking: failed, non-degenerate OOD runs only; the median and its interval are bootstrap_ci's, resampled by problem_id
    t = site_table(res, n_boot=300)
    keys, R, ex = site_matrix(res, 'rescue')
    df = res.df.set_index('example_id').loc[ex]
    ok = (df.rescue_na == '').to_numpy() & (df.family_kind == 'ood').to_numpy()
    row = t.iloc[0]
    col = R[ok, list(keys.label).index(row.label)]
    est, lo, hi = bootstrap_ci(col, df.problem_id.to_numpy()[ok], np.median, 300)
    np.testing.assert_allclose([row.median_rescue, row.lo, row.hi], [est, lo, hi])
    assert row.n == np.isfinite(col).sum() and row.median_rescue == np.nanmax(t.score)
    assert set(res.df.rescue_na[res.df.survives]) == {'survived'}
    # stored once: the layer-0 attention output at the answer position stands for the stream entering block 1 there
    assert 'blocks.1.hook_resid_pre@pos-1' not in set(t.label)
    assert 'blocks.1.hook_resid_pre@pos-1' in t.set_index('label').loc['blocks.0.hook_attn_out@pos-1', 'aliases']
    top = top_sites(res, k=3, table=t)
    assert top.label.is_unique and list(top.score) == sorted(top.score, reverse=True)
