"Integration tests for actlab.probes: sklearn API compliance, solver agreement, support recovery, labels, ablation."
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

from actlab.probes import (PROBE_EXPECTED_FAILED_CHECKS, GroupLassoClassifier, GroupLassoRegressor, L1LogisticProbe,
                           LassoProbe, MultinomialL1Probe, ProbeConfig, all_probes, fit_prox, head_groups,
                           planted_activations, support_f1)
from actlab.probe_selection import alpha_max, clean_prompt_groups, cv_splits, regularization_path
from actlab.ternary import (TERNARY_CLASSES, mean_ablate_direction, mean_ablate_heads, predictive_vs_causal,
                            probe_direction, ternary_labels)

TORCH_VARIANTS = [L1LogisticProbe(solver='torch'), MultinomialL1Probe(solver='torch'), LassoProbe(solver='torch'),
                  GroupLassoClassifier(n_heads=None, batch_size=7), LassoProbe(standardize=False)]


# 1. scikit-learn API: every probe (default solver) and the torch-solver variants pass check_estimator's checks.
#    Skipped checks: none (PROBE_EXPECTED_FAILED_CHECKS is empty for every class).
@parametrize_with_checks(all_probes() + TORCH_VARIANTS,
                         expected_failed_checks=lambda est: PROBE_EXPECTED_FAILED_CHECKS[type(est).__name__])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_no_skipped_checks_listed():
    assert all(v == {} for v in PROBE_EXPECTED_FAILED_CHECKS.values())


def _data(task, n=600, d=20, seed=0):
    r = np.random.default_rng(seed)
    X = r.normal(size=(n, d)) * r.uniform(0.5, 3, d) + r.normal(size=d)  # unequal scales and offsets
    z = X[:, 0] / 3 - X[:, 5] + 0.5 * X[:, 7] + 0.5 * r.normal(size=n)
    if task == 'regression': return X, z
    if task == 'binary': return X, (z > np.median(z)).astype(int)
    return X, np.digitize(z, np.quantile(z, [1 / 3, 2 / 3]))


# 1b. Same objective, two solvers: the torch proximal-gradient solution equals scikit-learn's on the same data.
@pytest.mark.parametrize('cls,task,alpha', [(L1LogisticProbe, 'binary', 0.02), (LassoProbe, 'regression', 0.05),
                                            (MultinomialL1Probe, 'multiclass', 0.02), (MultinomialL1Probe, 'binary', 0.02)])
@pytest.mark.parametrize('standardize', [True, False])
def test_torch_matches_sklearn(cls, task, alpha, standardize):
    X, y = _data(task)
    a = cls(alpha=alpha, standardize=standardize, tol=1e-10, max_iter=100000).fit(X, y)
    b = cls(alpha=alpha, standardize=standardize, solver='torch', tol=1e-9, max_iter=100000, batch_size=128).fit(X, y)
    scale = np.abs(a.coef_).max()
    np.testing.assert_allclose(b.coef_, a.coef_, atol=2e-3 * scale)
    np.testing.assert_allclose(b.intercept_, a.intercept_, atol=2e-3 * max(1, np.abs(a.intercept_).max()))
    assert set(a.support_) == set(b.support_)
    assert (a.predict(X) == b.predict(X)).mean() > 0.99 if task != 'regression' else True


def test_group_lasso_singletons_is_lasso():
    X, y = _data('regression')
    a = LassoProbe(alpha=0.05, tol=1e-10, max_iter=100000).fit(X, y)
    g = GroupLassoRegressor(alpha=0.05, tol=1e-9, max_iter=100000).fit(X, y)  # no groups: one per feature
    np.testing.assert_allclose(g.coef_, a.coef_, atol=1e-4 * np.abs(a.coef_).max())


@pytest.mark.parametrize('cls,task', [(GroupLassoRegressor, 'regression'), (GroupLassoClassifier, 'binary'),
                                      (GroupLassoClassifier, 'multiclass')])
def test_group_lasso_kkt(cls, task):
    "The group solution satisfies the optimality conditions of the documented objective (checked in standardized space)."
    X, y = _data(task, d=20)
    alpha = 0.02
    m = cls(alpha=alpha, n_heads=5, tol=1e-10, max_iter=100000).fit(X, y)
    mu, sd = X.mean(0), X.std(0)
    Xs = (X - mu) / sd
    W = np.atleast_2d(m.coef_).T * sd[:, None]  # [d, K] standardized weights
    z = X @ np.atleast_2d(m.coef_).T + m.intercept_
    if task == 'regression': R = z - y[:, None]
    elif W.shape[1] == 1: R = 1 / (1 + np.exp(-z)) - (y == m.classes_[1])[:, None]
    else:
        P = np.exp(z - z.max(1, keepdims=True)); P /= P.sum(1, keepdims=True)
        R = P - (y[:, None] == m.classes_[None])
    G = Xs.T @ R / len(X)
    np.testing.assert_allclose(R.mean(0), 0, atol=1e-6)  # intercept optimal
    for g in head_groups(5, 4):
        wg, gg, lim = W[g], G[g], alpha * np.sqrt(len(g))
        if np.linalg.norm(wg) == 0: assert np.linalg.norm(gg) <= lim * (1 + 1e-4)
        else: np.testing.assert_allclose(gg, -lim * wg / np.linalg.norm(wg), atol=1e-5)
    assert len(m.selected_heads_) >= 1


def test_fit_stream_matches_fit():
    X, y = _data('binary', n=1000)
    full = L1LogisticProbe(alpha=0.02, solver='torch', tol=1e-9).fit(X, y)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(X), torch.tensor(y)), batch_size=100)
    streamed = L1LogisticProbe(alpha=0.02, tol=1e-9).fit_stream(loader)  # fit_stream always uses the torch solver
    np.testing.assert_allclose(streamed.coef_, full.coef_, atol=1e-6)
    np.testing.assert_array_equal(streamed.classes_, full.classes_)
    # string labels streamed as numpy batches, and a factory function
    ys = np.where(y == 1, 'survives', 'fails')
    s2 = L1LogisticProbe(alpha=0.02, tol=1e-9).fit_stream(lambda: ((X[i:i + 250], ys[i:i + 250]) for i in range(0, 1000, 250)))
    np.testing.assert_allclose(s2.coef_, full.coef_, atol=1e-6)
    assert list(s2.classes_) == ['fails', 'survives']
    # dict batches, as ActivationStore.dataloader yields them, with a 3-D activation (flattened per row)
    X3 = torch.tensor(X).reshape(1000, 4, -1)
    dicts = [{'z': X3[i:i + 200], 'survives': torch.tensor(y[i:i + 200])} for i in range(0, 1000, 200)]
    s3 = L1LogisticProbe(alpha=0.02, tol=1e-9).fit_stream(dicts, x_key='z', y_key='survives')
    np.testing.assert_allclose(s3.coef_, full.coef_, atol=1e-6)
    with pytest.raises(ValueError, match='pass x_key= and y_key='): L1LogisticProbe().fit_stream(dicts)
    with pytest.raises(TypeError, match='one-shot iterator'):
        L1LogisticProbe().fit_stream(((X[i:i + 250], y[i:i + 250]) for i in range(0, 1000, 250)))


def test_power_iteration_path_for_wide_inputs():
    r = np.random.default_rng(0)
    X = r.normal(size=(300, 4100)); y = X[:, :3].sum(1) + 0.1 * r.normal(size=300)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        res = fit_prox([(X, y)], 'squared', alpha=0.2, max_iter=300, tol=1e-4)
    assert np.isfinite(res.coef).all() and set(np.flatnonzero(res.coef[:, 0])) >= {0, 1, 2}


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_gpu_matches_cpu():
    X, y = _data('multiclass', n=2000)
    a = MultinomialL1Probe(alpha=0.02, solver='torch', tol=1e-9).fit(X, y)
    b = MultinomialL1Probe(alpha=0.02, solver='torch', tol=1e-9, device='cuda').fit(X, y)
    np.testing.assert_allclose(b.coef_, a.coef_, atol=1e-6)
    g = GroupLassoClassifier(alpha=0.02, n_heads=5, device='cuda', dtype='float32', tol=1e-5).fit(X, y)
    assert len(g.selected_heads_) >= 1


# 2. Path and grouped CV.
def test_path_grouped_cv_and_plots():
    D = planted_activations(n_prompts=100, d=16, k=2, seed=3)
    p = regularization_path(L1LogisticProbe(), D.X, D.y, D.groups, cfg=ProbeConfig(n_alphas=6, n_splits=3))
    assert p.alphas[0] == pytest.approx(alpha_max(L1LogisticProbe(), D.X, D.y)) and p.n_nonzero[0] == 0
    assert list(p.df.columns) == ['alpha', 'cv_accuracy', 'sem', 'n_nonzero', 'chosen'] and p.df.chosen.sum() == 1
    rec = p.record(); assert rec['probe'] == 'L1LogisticProbe' and rec['n_nonzero'] == len(p.estimator.support_)
    for tr, te in cv_splits(D.y, D.groups, 3): assert not set(D.groups[tr]) & set(D.groups[te])
    from actlab.probe_selection import plot_path, plot_head_heatmap
    assert len(plot_path(p).data) == 2
    Dh = planted_activations(n_prompts=100, d=16, k=1, n_heads=4, task='regression', seed=3)
    ph = regularization_path(GroupLassoRegressor(n_heads=4), Dh.X, Dh.y, Dh.groups, cfg=ProbeConfig(n_alphas=6, n_splits=3))
    assert 'n_heads' in ph.df and ph.df.cv_r2.max() > 0.5
    assert np.asarray(plot_head_heatmap(ph.estimator.group_norms_, n_layers=2).data[0].z).shape == (2, 2)


def test_clean_prompt_groups_from_pairs():
    from actlab.tasks import TaskConfig, make_pairs
    df = make_pairs(TaskConfig(n_per_cell=5)).df
    g = clean_prompt_groups(df)
    assert len(g) == len(df)
    for _, sub in df.groupby(g): assert sub[['op', 'a', 'b', 'template']].drop_duplicates().shape[0] == 1
    with pytest.raises(KeyError, match='missing'): clean_prompt_groups(df.drop(columns='template'))


# 4. Ground truth: support F1 >= 0.9 at the CV-picked strength, every probe, several seeds.
CASES = [(L1LogisticProbe(), 'binary', None, 4), (LassoProbe(), 'regression', None, 4),
         (MultinomialL1Probe(solver='torch'), 'multiclass', None, 3),
         (GroupLassoClassifier(n_heads=8), 'binary', 8, 2), (GroupLassoRegressor(n_heads=8), 'regression', 8, 2)]

@pytest.mark.parametrize('est,task,n_heads,k', CASES, ids=lambda c: type(c).__name__ if hasattr(c, 'fit') else None)
@pytest.mark.parametrize('seed', [0, 1])
def test_support_recovery(est, task, n_heads, k, seed):
    D = planted_activations(n_prompts=200, d=48, k=k, task=task, n_heads=n_heads, seed=seed)
    p = regularization_path(est, D.X, D.y, D.groups, cfg=ProbeConfig(n_alphas=8, n_splits=4))
    sel = p.estimator.selected_heads_ if n_heads else p.estimator.support_
    f1 = support_f1(sel, D.heads if n_heads else D.support)
    assert f1 >= 0.9, f"{type(est).__name__} seed {seed}: selected {sorted(sel)} vs planted {sorted(D.heads if n_heads else D.support)}"


def test_support_recovery_sklearn_multinomial():
    D = planted_activations(n_prompts=120, d=24, k=3, task='multiclass', seed=0)
    p = regularization_path(MultinomialL1Probe(tol=1e-4), D.X, D.y, D.groups, cfg=ProbeConfig(n_alphas=6, n_splits=3))
    assert support_f1(p.estimator.support_, D.support) >= 0.9


# Bad input.
def test_bad_input_errors():
    X, y = _data('binary', n=50)
    with pytest.raises(ValueError, match='only one class'): L1LogisticProbe().fit(X, np.zeros(50))
    with pytest.raises(ValueError, match='only one class'): GroupLassoClassifier().fit(X, np.zeros(50))
    Xn = X.copy(); Xn[3, 3] = np.nan
    for est in all_probes():
        with pytest.raises(ValueError, match='NaN'): est.fit(Xn, y)
        with pytest.raises(ValueError, match='one row per example|inconsistent'): est.fit(X, y[:-2])
    with pytest.raises(ValueError, match='does not cover the 20 input dimensions'): GroupLassoClassifier(n_heads=3).fit(X, y)
    with pytest.raises(ValueError, match='do not cover the input dimensions'):
        GroupLassoClassifier(groups=[range(0, 10), range(10, 19)]).fit(X, y)
    with pytest.raises(ValueError, match='overlaps'): GroupLassoClassifier(groups=[range(0, 11), range(10, 20)]).fit(X, y)
    with pytest.raises(ValueError, match='alpha must be'): LassoProbe(alpha=-1).fit(X, y)
    with pytest.raises(ValueError, match='NaN or inf'): L1LogisticProbe().fit_stream([(Xn, y)])
    with pytest.raises(ValueError, match='missing labels'): LassoProbe().fit_stream([(X, np.where(y > 0, np.nan, 1.0))])


# 3. Ternary labels.
def test_ternary_labels():
    r = np.random.default_rng(0)
    n = 900
    ans = r.integers(0, 6, n)
    clean = np.concatenate([np.eye(6)[ans] * 3, r.normal(size=(n, 10))], 1) + 0.3 * r.normal(size=(n, 16))
    kind = r.integers(0, 3, n)
    corr = clean.copy(); corr[kind == 2, :6] = 0.3 * r.normal(size=((kind == 2).sum(), 6))
    groups = np.arange(n) // 3
    labels, rec = ternary_labels(clean, ans, corr, kind == 0, groups=groups, site='blocks.1.hook_resid_post')
    assert set(labels) <= set(TERNARY_CLASSES)
    assert (labels[kind == 0] == 'preserved').all()
    assert (labels[kind == 1] == 'readable_unused').mean() > 0.95
    assert (labels[kind == 2] == 'erased').mean() > 0.7
    assert rec['clean_heldout_accuracy'] > 0.95 and rec['cross_fit']['grouped_by_clean_prompt']
    assert sum(rec['counts'].values()) == n and rec['site'] == 'blocks.1.hook_resid_post'
    import json; json.dumps(rec)  # JSON-able for the manifest
    with pytest.raises(ValueError, match='Use a later site'):
        ternary_labels(r.normal(size=(n, 16)), ans, corr, kind == 0, groups=groups)
    with pytest.raises(ValueError, match='one row per pair'): ternary_labels(clean, ans[:-1], corr, kind == 0)
    bad = corr.copy(); bad[0, 0] = np.inf
    with pytest.raises(ValueError, match='NaN or inf'): ternary_labels(clean, ans, bad, kind == 0)


# 5. Predictive vs causal, on a tiny model.
def _tiny():
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    torch.manual_seed(0)
    return HookedTransformer(HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=12,
                                                     d_vocab=40, act_fn='gelu', normalization_type='LN', seed=0)).eval()


def test_ablation_and_report():
    model = _tiny()
    toks = torch.randint(0, 40, (96, 8)); a_ids, d_ids = torch.full((96,), 3), torch.full((96,), 4)
    _, cache = model.run_with_cache(toks, names_filter=lambda n: n in ('blocks.1.hook_resid_post', 'blocks.1.attn.hook_z'))
    resid = cache['blocks.1.hook_resid_post'][:, -1].numpy().astype(np.float64)
    z = cache['blocks.1.attn.hook_z'][:, -1].reshape(96, -1).numpy().astype(np.float64)
    logits = model(toks)[:, -1].detach()
    ld = (logits[:, 3] - logits[:, 4]).numpy()
    # the direction the final LayerNorm + unembedding read the logit difference from
    u = (model.ln_final.w * (model.W_U[:, 3] - model.W_U[:, 4])).detach().numpy(); u -= u.mean()
    r = mean_ablate_direction(model, toks, a_ids, d_ids, 'blocks.1.hook_resid_post', u)
    np.testing.assert_allclose(r['before'], ld, atol=1e-4)
    assert np.abs(r['after'] - r['before']).mean() > 0.5 * np.abs(ld - ld.mean()).mean()
    probe = LassoProbe(alpha=0.01).fit(resid, ld)
    rep = predictive_vs_causal(model, toks, a_ids, d_ids, probe, probe.score(resid, ld), hook_name='blocks.1.hook_resid_post', n_random=3)
    assert list(rep.ablated[:2]) == ['probe direction', 'random direction (mean of 3)']
    assert rep.mean_abs_change[0] > 3 * rep.mean_abs_change[1]  # the probe found the read direction
    amax = alpha_max(GroupLassoRegressor(n_heads=4), z, ld)
    g = next(m for m in (GroupLassoRegressor(alpha=amax * f, n_heads=4).fit(z, ld) for f in (0.9, 0.7, 0.5, 0.3, 0.1))
             if 1 <= len(m.selected_heads_) <= 2)  # a probe that keeps 1-2 of the 4 heads
    rep_h = predictive_vs_causal(model, toks, a_ids, d_ids, g, g.score(z, ld), heads=[(1, h) for h in range(4)], n_random=2)
    assert rep_h.ablated.str.startswith('selected heads').any() and len(rep_h) == 2
    with pytest.raises(ValueError, match='one pair per group'):
        predictive_vs_causal(model, toks, a_ids, d_ids, g, 0.5, heads=[(1, 0)])
    # ablating every head of layer 1 at the last position equals replacing hook_z there by its mean
    full = mean_ablate_heads(model, toks, a_ids, d_ids, [(1, h) for h in range(4)])
    zz = probe_direction(g)
    assert full['after'].shape == (96,) and np.isclose(np.linalg.norm(zz), 1)
    with pytest.raises(ValueError, match='per position'):
        mean_ablate_direction(model, toks, a_ids, d_ids, 'blocks.1.hook_resid_post', np.ones(7))


def test_probe_vs_majority_claim():
    "Holds on planted data; does not hold when the labels are one random draw per clean prompt."
    from actlab.probe_selection import probe_vs_majority_claim
    D = planted_activations(n_prompts=240, d=24, k=3, seed=5)
    cfg = ProbeConfig(n_alphas=5, n_splits=3)
    c = probe_vs_majority_claim(L1LogisticProbe(), D.X, D.y, D.groups, cfg=cfg)
    assert c.holds and c.evidence['ci_low'] > 0 and c.evidence['ci_low'] <= c.evidence['difference'] <= c.evidence['ci_high']
    # majority accuracy is measured on the scoring half with the selection half's majority class
    assert 0.3 < c.evidence['majority_accuracy'] < 0.7 and c.evidence['n'] + c.evidence['n_selection'] == len(D.y)
    y_null = (np.random.default_rng(2).random(240) < 0.25).astype(int)[D.groups]
    assert not probe_vs_majority_claim(L1LogisticProbe(), D.X, y_null, D.groups, cfg=cfg).holds


def test_probe_vs_majority_random_weights_does_not_hold():
    "A random HookedTransformer with the built-in model's config and tokenizer: its survival is not predictable beyond the majority."
    from transformer_lens import HookedTransformer
    from actlab.models import load_model, data_dir, DEFAULT_MODEL_DIR
    from actlab.tasks import TaskConfig, make_pairs
    from actlab.capture import pair_activations
    from actlab.metrics import correct
    from actlab.probe_selection import probe_vs_majority_claim
    if not (data_dir() / DEFAULT_MODEL_DIR / 'config.json').exists():
        pytest.skip('the built-in model is not shipped in this checkout')
    ref = load_model('builtin', device='cpu')
    model = HookedTransformer(type(ref.cfg)(**{**ref.cfg.to_dict(), 'seed': 1})).eval()
    model.set_tokenizer(ref.tokenizer, default_padding_side='right')
    pairs = make_pairs(TaskConfig(n_per_cell=10), ref.tokenizer)
    L = model.cfg.n_layers - 1
    site, final = f'blocks.{L}.hook_resid_pre', f'blocks.{L}.hook_resid_post'
    acts = pair_activations(model, pairs, [site, final], 'corrupted')
    survives = correct(model.unembed(model.ln_final(acts[final][:, None]))[:, 0], pairs.answer_ids).numpy()
    claim = probe_vs_majority_claim(L1LogisticProbe(), acts[site].reshape(len(pairs), -1).double().numpy(), survives,
                                    clean_prompt_groups(pairs.df), cfg=ProbeConfig(n_alphas=5, n_splits=3), what='survival')
    assert claim.holds is False
    assert survives.mean() < 0.2  # why: a random network is almost never right, so the majority class is hard to beat
