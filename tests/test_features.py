"Integration tests of actlab.features on the built-in model (phase E)."
import os
os.environ.setdefault('ACTLAB_NO_TRAIN', '1')
import numpy as np, pandas as pd, pytest, torch
from actlab.models import load_model
from actlab.tasks import TaskConfig, make_pairs
from actlab.core import ConfigError
from actlab.extract import extract, ExtractConfig
from actlab.features import (FeatureConfig, quick_sae, pair_feature_acts, store_feature_acts, encode_at, suppressed_features,
                             junk_features, head_changes, top_heads, feature_attribution, top_attributions, ablate_feature,
                             restore_features, steer, steering_curve, rescue_by_cell, saelens_check, plot_suppressed, plot_junk, plot_head_changes,
                             plot_rescue)

HOOK = 'blocks.1.hook_resid_pre'

@pytest.fixture(scope='module')
def setup():
    torch.manual_seed(0)
    model = load_model('builtin', device='cpu')
    pairs = make_pairs(TaskConfig(), model.tokenizer).filter(corruption_type=['id_control', 'junk_words', 'repeated'])
    sae = quick_sae(model, pairs, HOOK, steps=200)
    return model, pairs, sae

@pytest.fixture(scope='module')
def group(setup):
    model, pairs, sae = setup
    return pairs.filter(corruption_type='junk_words', suffix_length=8).groups()[0]

def test_config_validation():
    with pytest.raises(ConfigError, match='top_k'): FeatureConfig(top_k=0)
    with pytest.raises(ConfigError, match='junk_clean_rate'): FeatureConfig(junk_clean_rate=0.5, junk_min_rate=0.2)

def test_store_matches_direct(setup, tmp_path):
    model, pairs, sae = setup
    store = extract(model, pairs, tmp_path / 'store', ExtractConfig(hooks=(HOOK,), positions='answer', also_clean=True, progress=False))
    a, b = pair_feature_acts(model, sae, pairs), store_feature_acts(store, sae)
    np.testing.assert_array_equal(a.df.example_id.to_numpy(), b.df.example_id.to_numpy())
    np.testing.assert_allclose(a.clean, b.clean, atol=1e-4)
    np.testing.assert_allclose(a.corrupted, b.corrupted, atol=1e-4)
    other = extract(model, pairs, tmp_path / 'other', ExtractConfig(hooks=('blocks.0.hook_resid_pre',), also_clean=True, progress=False))
    with pytest.raises(ValueError, match='also_clean=True'): store_feature_acts(other, sae)
    with pytest.raises(ValueError, match='pair_feature_acts'): junk_features(b, where='any')

def test_phase_e_tables(setup):
    model, pairs, sae = setup
    fa = pair_feature_acts(model, sae, pairs)
    sup = suppressed_features(fa, FeatureConfig(top_k=3))
    assert sup.groupby(['corruption_type', 'suffix_length']).size().max() <= 3
    np.testing.assert_allclose(sup['drop'], sup.mean_clean - sup.mean_corrupted, atol=1e-5)
    junk = junk_features(fa, FeatureConfig(junk_clean_rate=0.02, junk_min_rate=0.3))
    clean_rate = (fa.clean > 0).mean(0)
    assert (clean_rate[junk.feature.to_numpy()] <= 0.02).all()
    anywhere = junk_features(fa, where='any')
    assert (anywhere.rate_clean <= 0.05).all() and (anywhere.rate_corrupted >= 0.2).all()
    assert (anywhere.corruption_type == 'id_control').sum() < max(1, len(anywhere))
    with pytest.raises(ValueError, match="where must be"): junk_features(fa, where='suffix')
    heads = head_changes(model, pairs)
    per_fam = heads.groupby('corruption_type').rel_change.mean()
    assert per_fam['id_control'] < per_fam[['junk_words', 'repeated']].min()
    assert len(top_heads(heads, 3)) == 3
    for fig in (plot_suppressed(sup), plot_junk(junk), plot_head_changes(heads)): assert fig.layout.title.text

def _direct_patch(model, tokens, delta, a, d):
    "logit_diff drop when `delta` `[n, d_model]` is removed from the last residual stream, final LN scale frozen (exact direct path)."
    from actlab.capture import capture
    from actlab.metrics import logit_diff
    last = f'blocks.{model.cfg.n_layers - 1}.hook_resid_post'
    scale = capture(model, tokens, ['ln_final.hook_scale'])['ln_final.hook_scale']
    hooks = [(last, lambda x, hook: torch.cat([x[:, :-1], (x[:, -1] - delta)[:, None]], 1)),
             ('ln_final.hook_scale', lambda s, hook: torch.cat([s[:, :-1], scale.reshape(-1, 1, 1)], 1))]
    with torch.no_grad():
        return (logit_diff(model(tokens)[:, -1], a, d) - logit_diff(model.run_with_hooks(tokens, fwd_hooks=hooks)[:, -1], a, d)).numpy()

def test_attribution_is_the_exact_direct_path(setup, group):
    "feature_attribution equals removing the feature's decoder write from the last residual stream (LN scale frozen)."
    model, pairs, sae = setup
    g = group
    toks, a, d = g.tokens('corrupted'), g.answer_ids, g.distractor_ids
    attr = feature_attribution(model, sae, toks, a, d)
    acts = encode_at(model, sae, toks)
    W = sae.W_dec.detach()
    from actlab.baseline import answer_direction
    from actlab.capture import capture
    sigma = capture(model, toks, ['ln_final.hook_scale'])['ln_final.hook_scale'].reshape(-1)
    direction = answer_direction(model, a, d)
    for f in acts.sum(0).argsort(descending=True)[:3].tolist():  # three features active on these runs
        drop = _direct_patch(model, toks, acts[:, f:f + 1] * W[f], a, d)
        np.testing.assert_allclose(attr[:, f], drop, atol=1e-4)
        # the same formula without the LayerNorm's centring misses the patch on this model (unfolded LN, uncentred W_dec)
        uncentred = (acts[:, f] * (direction @ W[f]) / sigma).numpy()
        assert np.abs(uncentred - drop).max() > 1e-3, f
    unscaled = feature_attribution(model, sae, toks, a, d, ln_scale=False)
    assert np.isfinite(unscaled).all() and not np.allclose(unscaled, attr)
    t = top_attributions(attr, g.df, k=2)
    assert set(t.example_id) <= set(g.df.example_id) and t.groupby('example_id').size().max() <= 2

def test_interventions(setup, group):
    model, pairs, sae = setup
    g = group
    toks = g.tokens('corrupted')[:1]
    a, d = g.answer_ids[:1], g.distractor_ids[:1]
    f = int(encode_at(model, sae, toks)[0].argmax())
    act = float(encode_at(model, sae, toks)[0, f])
    ab = ablate_feature(model, sae, toks, a, d, f)
    # ablating = steering by minus the feature's own contribution
    np.testing.assert_allclose(steer(model, sae, toks, a, d, f, -act), ab.value_ablated.to_numpy(), atol=1e-4)
    with pytest.raises(IndexError, match='out of range'): ablate_feature(model, sae, toks, a, d, sae.cfg.d_sae)
    curve = steering_curve(model, sae, toks, a, d, f, [0.0, -act])
    np.testing.assert_allclose(curve['mean'], [ab.value[0], ab.value_ablated[0]], atol=1e-4)
    r = restore_features(model, sae, g.tokens('clean'), g.tokens('corrupted'), g.answer_ids, g.distractor_ids, top_k=4)
    ok = ~r.degenerate
    np.testing.assert_allclose(r.rescue[ok], ((r.patched - r.corrupted) / (r.clean - r.corrupted))[ok], rtol=1e-5)
    assert r.rescue[~ok].isna().all() and (r.n_restored <= 4).all()
    # restoring nothing changes nothing
    none = restore_features(model, sae, g.tokens('clean'), g.tokens('corrupted'), g.answer_ids, g.distractor_ids, features=[])
    np.testing.assert_allclose(none.patched, none.corrupted, atol=1e-4)

def test_rescue_by_cell(setup):
    model, pairs, sae = setup
    t = rescue_by_cell(model, sae, pairs, top_k=3)
    assert len(t) == len(pairs) and set(t.corruption_type) == {'id_control', 'junk_words', 'repeated'}
    assert plot_rescue(t).data

def test_saelens_agrees(setup, group):
    model, pairs, sae = setup
    f = int(encode_at(model, sae, group.tokens('clean')).sum(0).argmax())
    chk = saelens_check(model, sae, group.tokens('clean'), f)
    assert (chk.max_abs_diff < 1e-4).all(), chk
