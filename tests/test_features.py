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

def test_attribution_by_hand(setup, group):
    model, pairs, sae = setup
    g = group
    attr = feature_attribution(model, sae, g.tokens('corrupted'), g.answer_ids, g.distractor_ids)
    acts = encode_at(model, sae, g.tokens('corrupted'))
    W_U = model.W_U * model.ln_final.w[:, None] if hasattr(model.ln_final, 'w') else model.W_U
    for i in range(3):
        d = W_U[:, g.answer_ids[i]] - W_U[:, g.distractor_ids[i]]
        np.testing.assert_allclose(attr[i], (acts[i] * (sae.W_dec @ d)).detach().numpy(), atol=1e-4)
    scaled = feature_attribution(model, sae, g.tokens('corrupted'), g.answer_ids, g.distractor_ids, ln_scale=True)
    assert np.isfinite(scaled).all() and not np.allclose(scaled, attr)
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
    np.testing.assert_allclose(steer(model, sae, toks, a, d, f, -act), ab.logit_diff_ablated.to_numpy(), atol=1e-4)
    with pytest.raises(IndexError, match='out of range'): ablate_feature(model, sae, toks, a, d, sae.cfg.d_sae)
    curve = steering_curve(model, sae, toks, a, d, f, [0.0, -act])
    np.testing.assert_allclose(curve.mean_logit_diff, [ab.logit_diff[0], ab.logit_diff_ablated[0]], atol=1e-4)
    r = restore_features(model, sae, g.tokens('clean'), g.tokens('corrupted'), g.answer_ids, g.distractor_ids, top_k=4)
    ok = ~r.degenerate
    np.testing.assert_allclose(r.rescue[ok], ((r.logit_diff_patched - r.logit_diff_corrupted) / (r.logit_diff_clean - r.logit_diff_corrupted))[ok], rtol=1e-5)
    assert r.rescue[~ok].isna().all() and (r.n_restored <= 4).all()
    # restoring nothing changes nothing
    none = restore_features(model, sae, g.tokens('clean'), g.tokens('corrupted'), g.answer_ids, g.distractor_ids, features=[])
    np.testing.assert_allclose(none.logit_diff_patched, none.logit_diff_corrupted, atol=1e-4)

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
