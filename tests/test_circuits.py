"Phase E as feature circuits (actlab.circuits): splicing, per-example effects, circuits, held-out interventions and claims that can fail."
import os
os.environ.setdefault('ACTLAB_NO_TRAIN', '1')
import numpy as np, pandas as pd, pytest, torch
from actlab.models import load_model
from actlab.tasks import TaskConfig, make_pairs
from actlab.metrics import margin
from actlab.features import encode_at
from actlab.circuits import (site_saes, splice_saes, spliced_gap, feature_effects, effects_agreement, family_circuit,
                             heldout_interventions, intervention_table, agreement_claim, circuit_claim, intervention_claim, plot_circuit)

SITES = ['blocks.2.hook_resid_pre', 'blocks.4.hook_resid_pre']

def _pairs(model, n=10):
    return make_pairs(TaskConfig(n_per_cell=n), model.tokenizer).filter(corruption_type=['id_control', 'junk_words'], suffix_length=[4, 8])

@pytest.fixture(scope='module')
def setup():
    torch.manual_seed(0)
    model = load_model('builtin', device='cpu')
    pairs = _pairs(model)
    saes = site_saes(model, pairs, SITES, steps=200)
    return model, pairs, saes, feature_effects(model, saes, pairs)

def _random_model(model, seed=1):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    cfg = {k: v for k, v in model.cfg.to_dict().items() if k in HookedTransformerConfig.__dataclass_fields__ and k not in ('n_params', 'device')}
    cfg['seed'] = seed
    return HookedTransformer(HookedTransformerConfig(**cfg), tokenizer=model.tokenizer).eval()

def test_spliced_logits_equal_original(setup):
    model, pairs, saes, _ = setup
    for g in pairs.groups(): assert spliced_gap(model, saes, g.tokens('corrupted')) < 1e-4

def test_exact_effect_is_a_patch_by_hand(setup):
    "The exact effect of a feature equals adding (clean − corrupted) × its decoder row at its hook in the plain model."
    model, pairs, saes, eff = setup
    g = pairs.filter(corruption_type='junk_words', suffix_length=8).groups()[0]
    h = SITES[0]; sae = saes[h]
    row = eff[(eff.site == h) & (eff.method == 'exact') & (eff.feature != 'error') & eff.example_id.isin(g.df.example_id)].iloc[0]
    i = int(np.flatnonzero(g.df.example_id.to_numpy() == row.example_id)[0])
    ct, xt = g.tokens('clean')[i:i + 1], g.tokens('corrupted')[i:i + 1]
    a, d = g.answer_ids[i:i + 1], g.distractor_ids[i:i + 1]
    f = int(row.feature)
    dv = (encode_at(model, sae, ct)[0, f] - encode_at(model, sae, xt)[0, f]) * sae.W_dec[f].detach()
    def add(x, hook): x = x.clone(); x[:, -1] += dv; return x
    with torch.no_grad():
        by_hand = float(margin(model.run_with_hooks(xt, fwd_hooks=[(h, add)])[:, -1], a) - margin(model(xt)[:, -1], a))
    np.testing.assert_allclose(row.effect, by_hand, atol=1e-4)

def test_effects_table_and_agreement(setup):
    model, pairs, saes, eff = setup
    assert {'example_id', 'family', 'suffix_length', 'site', 'feature', 'effect', 'method'} <= set(eff.columns)
    assert len(eff.drop_duplicates('example_id')) == len(pairs)
    ag = effects_agreement(eff)
    assert list(ag.site) == SITES and ag.topk_overlap.between(0, 1).all()
    few = feature_effects(model, saes, pairs.filter(corruption_type='junk_words', suffix_length=8), verify=2)
    per = few[(few.method == 'exact') & (few.feature != 'error')].groupby(['example_id', 'site']).size()
    assert per.max() <= 2
    with pytest.raises(Exception, match='positions'): feature_effects(model, saes, pairs, positions='first')
    with pytest.raises(Exception, match='differentiable'): feature_effects(model, saes, pairs, metric='correct')

def test_circuit_and_interventions(setup):
    model, pairs, saes, eff = setup
    c = family_circuit(model, saes, pairs, eff, 'junk_words', n_nodes=3, n_boot=200)
    assert set(c.nodes.site) == set(SITES) and (c.nodes.feature == 'error').sum() == 2
    assert c.accuracy_drop[0] > family_circuit(model, saes, pairs, eff, 'id_control', n_nodes=3, n_boot=200).accuracy_drop[0]
    assert plot_circuit(c).data
    iv = heldout_interventions(model, saes, pairs, eff, k=3, n_controls=2)
    from actlab.metrics import split_halves
    sel = set(pairs.df.problem_id[split_halves(pairs.df.problem_id.to_numpy())])
    assert len(iv) and not (set(iv.problem_id) & sel)
    assert set(intervention_table(iv, n_boot=100).family) == {'junk_words'}

def test_claims_fail_on_a_random_weight_model(setup):
    "The checks can fail: on a random-weight model of the same shape, none of the circuit claims holds."
    model = _random_model(setup[0])
    pairs = _pairs(model, n=6)
    saes = site_saes(model, pairs, SITES, steps=60)
    eff = feature_effects(model, saes, pairs)
    c = family_circuit(model, saes, pairs, eff, 'junk_words', n_nodes=3, n_boot=100)
    iv = heldout_interventions(model, saes, pairs, eff, k=3, n_controls=2)
    claims = [agreement_claim(eff), circuit_claim(c), intervention_claim(iv)]
    assert not any(cl.holds for cl in claims), claims
