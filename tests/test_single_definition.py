"""One definition per metric: the same example gives the same correctness, margin and logit difference through every
phase's path (baseline, patching, path patching, attribution patching, extraction labels), all computed by actlab.metrics."""
import tempfile

import numpy as np
import pytest
import torch

from actlab.baseline import evaluate_pairs
from actlab.extract import ExtractConfig, extract
from actlab.metrics import answer_metrics
from actlab.patching import PatchingConfig, patch_pairs, per_example_patch
from actlab.attribution import attribution_patch
from actlab.path_patching import head_paths
from helpers import builtin_model, builtin_pairs

ATOL = 1e-4


@pytest.fixture(scope='module')
def study():
    model = builtin_model()
    pairs = builtin_pairs(model, n_per_cell=2, suffix_length=[1, 4])
    return model, pairs, evaluate_pairs(model, pairs).set_index('example_id')


def by_hand(model, pairs, kind):
    "The definition itself, written out: logits at the last position, argmax, answer minus best other, answer minus distractor."
    rows = []
    for g in pairs.groups():
        with torch.no_grad():
            lg = model(g.tokens(kind))[:, -1].float()
        a, d = g.answer_ids, g.distractor_ids
        ar = torch.arange(len(lg))
        others = lg.clone(); others[ar, a] = -torch.inf
        rows += [dict(example_id=int(e), correct=bool(lg[i].argmax() == a[i]), margin=float(lg[i, a[i]] - others[i].max()),
                      logit_diff=float(lg[i, a[i]] - lg[i, d[i]])) for i, e in enumerate(g.df.example_id)]
    import pandas as pd
    return pd.DataFrame(rows).set_index('example_id')


def test_baseline_is_the_definition(study):
    model, pairs, base = study
    for kind in ('clean', 'corrupted'):
        want = by_hand(model, pairs, kind).loc[base.index]
        assert (base[f'correct_{kind}'] == want.correct).all()
        np.testing.assert_allclose(base[f'margin_{kind}'], want.margin, atol=ATOL)
        np.testing.assert_allclose(base[f'logit_diff_{kind}'], want.logit_diff, atol=ATOL)
    assert (base.survives == base.correct_corrupted).all()  # survives means correct


def test_patching_records_the_same_numbers(study):
    model, pairs, base = study
    res = patch_pairs(model, pairs, PatchingConfig(sites=('resid_pre',))).df.set_index('example_id').loc[base.index]
    for kind in ('clean', 'corrupted'):
        np.testing.assert_allclose(res[f'margin_{kind}'], base[f'margin_{kind}'], atol=ATOL)
        np.testing.assert_allclose(res[f'logit_diff_{kind}'], base[f'logit_diff_{kind}'], atol=ATOL)
    assert (res.survives == base.survives).all() and (res.clean_correct == base.correct_clean).all()


@pytest.mark.parametrize('metric', ['margin', 'logit_diff'])
def test_sweeps_start_from_the_same_metric(study, metric):
    "A patch that copies the corrupted run's own values gives back the corrupted metric: exact, AtP and path patching alike."
    model, pairs, base = study
    g = pairs.groups()[0]
    ids = g.df.example_id.to_numpy()
    x = g.tokens('corrupted')
    want = base.loc[ids, f'{metric}_corrupted'].to_numpy()
    exact = per_example_patch(model, x, x, g.answer_ids, g.distractor_ids, site='resid_pre', metric=metric)
    atp = attribution_patch(model, x, x, g.answer_ids, g.distractor_ids, site='resid_pre', metric=metric)
    for out in (exact, atp):
        np.testing.assert_allclose(out.flatten(1).numpy(), np.repeat(want[:, None], out.flatten(1).shape[1], 1), atol=ATOL)


def test_path_patching_uses_the_same_margin(study):
    model, pairs, base = study
    hp = head_paths(model, pairs)
    np.testing.assert_allclose(hp.df.metric_clean, base.loc[hp.df.example_id, 'margin_clean'], atol=ATOL)
    np.testing.assert_allclose(hp.df.metric_corrupted, base.loc[hp.df.example_id, 'margin_corrupted'], atol=ATOL)


def test_extraction_labels_are_the_same(study):
    model, pairs, base = study
    with tempfile.TemporaryDirectory() as d:
        store = extract(model, pairs, f'{d}/s', ExtractConfig(hooks=(f'blocks.{model.cfg.n_layers - 1}.hook_resid_pre',), progress=False))
        meta = store.metadata().set_index('example_id').loc[base.index]
    np.testing.assert_allclose(meta.logit_diff_clean, base.logit_diff_clean, atol=ATOL)
    np.testing.assert_allclose(meta.logit_diff_corrupted, base.logit_diff_corrupted, atol=ATOL)
    assert (meta.survives.astype(bool) == base.survives).all()


def test_answer_metrics_is_the_one_entry_point(study):
    model, pairs, base = study
    g = pairs.groups()[0]
    with torch.no_grad():
        m = answer_metrics(model(g.tokens('corrupted'))[:, -1], g.answer_ids, g.distractor_ids)
    ids = g.df.example_id.to_numpy()
    np.testing.assert_allclose(m['margin'], base.loc[ids, 'margin_corrupted'], atol=ATOL)
    assert (m['correct'] == base.loc[ids, 'correct_corrupted'].to_numpy()).all()


@pytest.mark.parametrize('metric', ['margin', 'logit_diff'])
def test_features_report_the_same_metric(study, metric):
    "A feature intervention's unedited value is the baseline's metric of the corrupted run."
    from actlab.features import ablate_feature, quick_sae
    model, pairs, base = study
    sae = quick_sae(model, pairs, 'blocks.1.hook_resid_pre', steps=10)
    g = pairs.groups()[0]
    out = ablate_feature(model, sae, g.tokens('corrupted'), g.answer_ids, g.distractor_ids, features=0, metric=metric)
    np.testing.assert_allclose(out.value.to_numpy(), base.loc[g.df.example_id, f'{metric}_corrupted'], atol=ATOL)


def test_dashboards_show_the_same_numbers(study):
    "The dashboards' logit differences and their top prediction agree with the baseline's logit difference and correctness."
    from actlab.dashboards import build_dashboard_data
    from actlab.features import quick_sae
    model, pairs, base = study
    sae = quick_sae(model, pairs, 'blocks.1.hook_resid_pre', steps=10)
    res = patch_pairs(model, pairs, PatchingConfig(sites=('resid_pre',)))
    data = build_dashboard_data(model, sae, pairs, patching=res)
    df = data.df.set_index('example_id').loc[base.index]
    np.testing.assert_allclose(df.logit_diff_corrupted, base.logit_diff_corrupted, atol=ATOL)
    top = {e: data.predictions[e]['corrupted'][0][0] for e in base.index}
    answer = pairs.df.set_index('example_id').loc[base.index, 'answer_token']
    assert all((top[e].strip() == answer[e].strip()) == base.correct_corrupted[e] for e in base.index)
