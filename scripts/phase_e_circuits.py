"Phase E feature circuits on the built-in model: the numbers of the h15 report."
import os, json, time; os.environ.setdefault('ACTLAB_NO_TRAIN', '1')
import torch, pandas as pd
from actlab.models import load_model
from actlab.tasks import TaskConfig, make_pairs, family_kind
from actlab.circuits import (circuit_subset, site_saes, feature_effects, effects_agreement, family_circuits, heldout_interventions,
                             intervention_table, agreement_claim, circuit_claim, intervention_claim, spliced_gap)
pd.set_option('display.width', 200)
t0 = time.time(); torch.manual_seed(0)
model = load_model('builtin', device='cpu')
pairs = circuit_subset(make_pairs(TaskConfig(), model.tokenizer), 12)
sites = ['blocks.2.hook_resid_pre', 'blocks.4.hook_resid_pre', 'blocks.5.hook_resid_pre']
saes = site_saes(model, pairs, sites, steps=300)
print('pairs', len(pairs), 'spliced gap', max(spliced_gap(model, saes, g.tokens('corrupted')) for g in pairs.groups()))
eff = feature_effects(model, saes, pairs)
print(effects_agreement(eff).round(3).to_string())
ex = eff.drop_duplicates('example_id')
drop = {f: (g.correct_clean.astype(float) - g.correct_corrupted.astype(float)).mean() for f, g in ex.groupby('family') if family_kind(f) == 'ood'}
worst = max(drop, key=drop.get); print('accuracy drop by family', {k: round(v, 3) for k, v in drop.items()}, 'worst', worst)
circ = family_circuits(model, saes, pairs, eff, families=[worst, 'id_control'])
for f, c in circ.items():
    print(f'--- {f}: n={c.n} ({c.subset}); error share {[round(x, 3) for x in c.error_share]}; accuracy drop {[round(x, 3) for x in c.accuracy_drop]}')
    print(c.nodes.round(3).to_string()); print(c.edges[c.edges.kept].round(3).to_string())
iv = heldout_interventions(model, saes, pairs, eff)
print(intervention_table(iv).round(3).to_string())
for cl in [agreement_claim(eff)] + [circuit_claim(c) for c in circ.values()] + [intervention_claim(iv)]: print(cl)

from actlab.circuits import sparse_probing, topk_share
for h in sites: print(sparse_probing(model, saes[h], pairs).round(3).to_string())
print(topk_share(eff).round(3).to_string())
print(f'{time.time() - t0:.0f} s')
