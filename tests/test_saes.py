"Integration tests for actlab.saes: providers over the store, training through SAELens's SAETrainer, exact resume, SAELens's format, evaluation formulas, ground truth, sweeps, bad input."
import itertools, json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sae_lens import SAE, HookedSAETransformer, StandardSAE, StandardSAEConfig
from transformer_lens import HookedTransformerConfig

from actlab.core import ConfigError
from actlab.saes import (SAETrainConfig, TensorProvider, StoreProvider, IterableProvider, as_provider, write_store,
                         make_training_sae, train_sae, read_history, plot_history, load_sae, NonFiniteLossError,
                         ARCHITECTURES)
from actlab.sae_eval import (splice, sae_metrics, splice_metrics, logit_diff_recovery, recovery_table,
                             saelens_cross_check, synthetic_model, synthetic_store, ground_truth_eval,
                             plot_feature_similarity, as_sae_transformer, SweepConfig, sweep, failure_signs,
                             plot_pareto)

HOOK = 'blocks.0.hook_resid_post'

def sparse_data(n, d_in=16, n_feat=32, p=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n_feat, d_in, generator=g), dim=-1)
    on = (torch.rand(n, n_feat, generator=g) < p).float() * (1 + torch.rand(n, n_feat, generator=g))
    return on @ dirs

def small_cfg(**kw):
    base = dict(architecture='topk', d_sae=32, k=3, steps=120, batch_size=128, lr=3e-3, log_every=10,
                dead_feature_window=30, feature_sampling_window=50, checkpoint_every=40)
    base.update(kw); return SAETrainConfig(**base)

@pytest.fixture(scope='module')
def lm_and_pairs():
    from actlab.tasks import TaskConfig, make_pairs, build_word_tokenizer
    tok = build_word_tokenizer()
    pairs = make_pairs(TaskConfig(), tok).filter(suffix_length=[1, 2])
    lm = HookedSAETransformer(HookedTransformerConfig(n_layers=2, d_model=16, d_head=4, n_heads=4, d_mlp=32, n_ctx=32,
                                                      d_vocab=len(tok), act_fn='gelu', seed=0))
    return lm, pairs

def states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return all(torch.equal(sa[k], sb[k]) for k in sa)

# ---------------------------------------------------------------- providers

def test_store_provider_on_extracted_store(tmp_path, lm_and_pairs):
    from actlab.extract import extract, ExtractConfig
    lm, pairs = lm_and_pairs
    st = extract(lm, pairs, tmp_path / 'store', ExtractConfig(hooks=(HOOK,), also_clean=True, progress=False, rows_per_shard=64),
                 model_name='tiny-random')
    n_id = int((pairs.df.corruption_type == 'id_control').sum())
    counts = {s: StoreProvider(st, HOOK, subset=s, batch_size=8).rows for s in ('all', 'clean', 'ood', 'id')}
    assert counts == {'all': len(pairs), 'clean': len(pairs), 'ood': len(pairs) - n_id, 'id': n_id}
    p = StoreProvider(st, subset='clean', batch_size=16)
    assert p.column == f'clean/{HOOK}' and p.d_in == 16 and p.hook_name == HOOK
    res = train_sae(small_cfg(steps=30, batch_size=16, checkpoint_every=0), p, tmp_path / 'run', progress=False)
    md = res.sae.cfg.metadata
    assert md.hook_name == HOOK and md.model_name == 'tiny-random' and md.model_weights_hash == st.manifest['model']['weights_hash']
    assert md.actlab_data['subset'] == 'clean'
    # splices into the model it came from
    lm.add_sae(load_sae(tmp_path / 'run'))
    try: assert HOOK in lm.acts_to_saes
    finally: lm.reset_saes()

def test_store_provider_order_is_reproducible_and_private(tmp_path):
    x = torch.randn(1000, 16)
    st = write_store(tmp_path / 's', {HOOK: x}, rows_per_shard=300)
    p = StoreProvider(st, batch_size=64, seed=3)
    torch.manual_seed(0); before = torch.get_rng_state()
    a = list(itertools.islice(p.batches(), 30))
    assert torch.equal(torch.get_rng_state(), before)  # the mixing buffer did not touch the global RNG
    torch.manual_seed(99)
    b = list(itertools.islice(p.batches(skip=17), 13))
    assert all(torch.equal(u, v) for u, v in zip(a[17:], b))
    # served rows are store rows, shuffled (not in store order)
    rows = torch.cat(a[:15])
    assert (torch.cdist(rows, x, compute_mode='donot_use_mm_for_euclid_dist').min(1).values < 1e-5).all()
    assert not torch.equal(rows[:64], x[:64])

def test_as_provider_kinds(tmp_path):
    x = sparse_data(512)
    assert isinstance(as_provider(x, 64), TensorProvider)
    assert isinstance(as_provider(x.numpy(), 64), TensorProvider)
    assert isinstance(as_provider(list(x.split(64)), 64), IterableProvider)
    st = write_store(tmp_path / 's', {HOOK: x})
    assert isinstance(as_provider(st, 64), StoreProvider)
    with pytest.raises(TypeError, match='one-shot'): as_provider(iter(x.split(64)), 64)
    with pytest.raises(ValueError, match='serves batches of 64'): as_provider(TensorProvider(x, 64), 32)

# ---------------------------------------------------------------- training, history, checkpoints, resume

@pytest.mark.parametrize('arch,extra', [('topk', {}), ('standard', dict(l1_coefficient=2.0, l1_warm_up_steps=50, lr_scheduler='cosineannealing')),
                                        ('batchtopk', {})])
def test_resume_matches_uninterrupted_run(tmp_path, arch, extra):
    x = sparse_data(4096)
    cfg = small_cfg(architecture=arch, **extra)
    full = train_sae(cfg, x, tmp_path / 'full', hook_name=HOOK, progress=False)
    part = train_sae(cfg, x, tmp_path / 'part', hook_name=HOOK, stop_after=95, progress=False)  # newest checkpoint: step 80
    assert not part.finished and [c.name for c in part.trainer.checkpoints()] == ['step_00000040', 'step_00000080']
    assert len(read_history(tmp_path / 'part')) == 9
    again = train_sae(cfg, x, tmp_path / 'part', hook_name=HOOK, resume=True, progress=False)
    assert again.finished and again.trainer.n_training_steps == cfg.steps
    assert again.trainer.n_training_samples == cfg.steps * cfg.batch_size
    assert states_equal(full.sae, again.sae)
    pd.testing.assert_frame_equal(read_history(tmp_path / 'full').drop(columns='time'),
                                  read_history(tmp_path / 'part').drop(columns='time'))

def test_resume_from_store_matches(tmp_path):
    st = write_store(tmp_path / 's', {HOOK: sparse_data(3000)}, rows_per_shard=700)
    cfg = small_cfg()
    full = train_sae(cfg, StoreProvider(st, batch_size=128), tmp_path / 'full', progress=False)
    train_sae(cfg, StoreProvider(st, batch_size=128), tmp_path / 'part', stop_after=50, progress=False)
    again = train_sae(cfg, StoreProvider(st, batch_size=128), tmp_path / 'part', resume=True, progress=False)
    assert states_equal(full.sae, again.sae)

def test_run_folder_and_history(tmp_path):
    res = train_sae(small_cfg(), sparse_data(2048), tmp_path / 'run', hook_name=HOOK, model=dict(name='m', weights_hash='h'), progress=False)
    run = tmp_path / 'run'
    assert (run / 'config.json').exists() and (run / 'sae' / 'cfg.json').exists() and (run / 'sae' / 'sae_weights.safetensors').exists()
    h = read_history(run)
    assert list(h.step) == list(range(10, 121, 10))
    for c in ('loss', 'mse_loss', 'l0', 'explained_variance', 'dead_features', 'dense_features', 'lr'): assert c in h, c
    assert h.loss.iloc[-1] < h.loss.iloc[0]
    assert len(plot_history(h).data) >= 4
    # a finished run resumed again just loads
    again = train_sae(small_cfg(), sparse_data(2048), run, hook_name=HOOK, model=dict(name='m', weights_hash='h'), resume=True, progress=False)
    assert states_equal(res.sae, again.sae)
    with pytest.raises(ConfigError, match='another config'):
        train_sae(small_cfg(k=4), sparse_data(2048), run, hook_name=HOOK, model=dict(name='m', weights_hash='h'), resume=True, progress=False)

def test_normalization_from_bounded_rows():
    x = 7 * sparse_data(4096)
    calls = []
    class Counting(TensorProvider):
        def sample(self, n): calls.append(n); return super().sample(n)
    cfg = small_cfg(steps=5, norm_rows=1000, checkpoint_every=0)
    res = train_sae(cfg, Counting(x, 128), progress=False)
    assert calls == [1000]
    sf = res.trainer.activation_scaler  # folded into the weights at the end
    assert sf.scaling_factor is None and res.sae.cfg.normalize_activations == 'none'
    # the estimate is SAELens's: sqrt(d_in) / mean norm of the sample
    est = TensorProvider(x, 128).sample(1000).norm(dim=-1).mean()
    from sae_lens.training.activation_scaler import ActivationScaler
    a = ActivationScaler(); a.estimate_scaling_factor(16, iter(TensorProvider(x, 128).sample(1000).split(128)), 8)
    assert abs(a.scaling_factor - 16 ** 0.5 / est) < 1e-4

# ---------------------------------------------------------------- SAELens format and splicing

@pytest.mark.parametrize('arch', list(ARCHITECTURES))
def test_saelens_format_roundtrip(tmp_path, arch):
    x = sparse_data(1024)
    cfg = small_cfg(architecture=arch, steps=20, checkpoint_every=0, d_sae=32, k=4)
    res = train_sae(cfg, x, tmp_path / 'run', hook_name=HOOK, model=dict(name='tiny', weights_hash='w'), progress=False)
    loaded = SAE.load_from_disk(tmp_path / 'run' / 'sae')
    assert type(loaded) is type(res.sae)
    with torch.no_grad(): assert torch.equal(loaded.encode(x[:100]), res.sae.encode(x[:100]))
    assert loaded.cfg.metadata.hook_name == HOOK and loaded.cfg.metadata.model_name == 'tiny'
    assert loaded.cfg.metadata.training_architecture is not None

def test_add_sae_splices(tmp_path):
    model = HookedSAETransformer(HookedTransformerConfig(n_layers=1, d_model=16, d_head=8, n_heads=2, d_mlp=32, n_ctx=12,
                                                         d_vocab=40, act_fn='relu', seed=0))
    toks = torch.randint(0, 40, (64, 10), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(toks, names_filter=HOOK)
    train_sae(small_cfg(steps=40, checkpoint_every=0), cache[HOOK].reshape(-1, 16), tmp_path / 'run', hook_name=HOOK, progress=False)
    sae = load_sae(tmp_path / 'run')
    with torch.no_grad():
        want = model.run_with_hooks(toks, fwd_hooks=[(HOOK, lambda a, hook: sae.decode(sae.encode(a)))])
        got = model.run_with_saes(toks, saes=[sae])
    assert torch.allclose(want, got, atol=1e-5)
    splice(model, sae)
    assert HOOK in model.acts_to_saes
    model.reset_saes()
    with pytest.raises(ValueError, match='does not have'):
        bad = load_sae(tmp_path / 'run'); bad.cfg.metadata.hook_name = 'blocks.5.hook_resid_post'; splice(model, bad)

# ---------------------------------------------------------------- evaluation

def perfect_sae(d, hook):
    "ReLU SAE with W_enc=[I, -I]: reconstructs exactly (x = relu(x) - relu(-x))."
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * d, apply_b_dec_to_input=False))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1)); sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_(); sae.b_dec.zero_()
    sae.cfg.metadata.hook_name = hook
    return sae

def test_metric_formulas():
    x = sparse_data(3000) + 5.0  # a large mean offset
    sae = perfect_sae(16, HOOK)
    m = sae_metrics(sae, x, batch_size=700)
    assert m['mse'] < 1e-9 and abs(m['explained_variance'] - 1) < 1e-6 and abs(m['cossim'] - 1) < 1e-6 and abs(m['l2_ratio'] - 1) < 1e-6
    # a "reconstruction" that outputs the mean explains nothing about the mean, yet ~everything about zero (issue #659)
    mean_sae = perfect_sae(16, HOOK)
    with torch.no_grad(): mean_sae.W_dec.zero_(); mean_sae.b_dec.copy_(x.mean(0))
    mm = sae_metrics(mean_sae, x)
    assert abs(mm['explained_variance']) < 1e-4 and mm['explained_variance_about_zero'] > 0.9
    # L0/L1/dead/dense by hand
    with torch.no_grad(): f = sae.encode(x)
    assert abs(m['l0'] - (f != 0).sum(-1).float().mean().item()) < 1e-6 and abs(m['l1'] - f.abs().sum(-1).mean().item()) < 1e-3
    dens = (f != 0).float().mean(0).numpy()
    assert np.allclose(m['feature_density'], dens) and m['dead_fraction'] == (dens == 0).mean()
    assert m['dense_fraction'] == (dens > 0.1).mean()
    with pytest.raises(ValueError, match='d_in=16'): sae_metrics(sae, torch.zeros(4, 8))

def test_perfect_sae_recovers_everything(lm_and_pairs):
    lm, pairs = lm_and_pairs
    sae = perfect_sae(16, HOOK)
    toks = pairs.groups()[0].tokens('clean')
    sm = splice_metrics(lm, sae, toks)
    assert abs(sm['ce_sae'] - sm['ce_orig']) < 1e-4 and sm['kl_sae'] < 1e-6 and abs(sm['ce_loss_recovered'] - 1) < 1e-3
    tab = recovery_table(logit_diff_recovery(lm, sae, pairs))
    assert np.allclose(tab.frac_recovered, 1, atol=1e-3)
    assert {'clean', 'id_control', 'ood'} <= set(tab.index)
    last = recovery_table(logit_diff_recovery(lm, sae, pairs, positions='last'))
    assert np.allclose(last.frac_recovered, 1, atol=1e-3)

def test_cross_check_with_saelens(lm_and_pairs):
    lm, pairs = lm_and_pairs
    toks = pairs.groups()[0].tokens('corrupted')[:48]
    _, cache = lm.run_with_cache(toks, names_filter=HOOK)
    res = train_sae(small_cfg(steps=60, checkpoint_every=0, d_sae=48, k=4), cache[HOOK].reshape(-1, 16), hook_name=HOOK, progress=False)
    cc = saelens_cross_check(lm, res.sae, toks)
    assert (cc.abs_diff <= 1e-4 * (1 + cc.saelens.abs())).all(), cc

# ---------------------------------------------------------------- ground truth

def test_ground_truth_mcc(tmp_path):
    syn = synthetic_model(32, 32, seed=0)
    st = synthetic_store(tmp_path / 'syn', syn, n_rows=12000)
    cfg = SAETrainConfig(architecture='topk', d_sae=32, k=3, steps=1200, batch_size=256, lr=3e-3, log_every=200,
                         dead_feature_window=50, feature_sampling_window=400)
    res = train_sae(cfg, StoreProvider(st, batch_size=256), progress=False)
    r = ground_truth_eval(res.sae, syn, num_samples=10000)
    assert r.mcc >= 0.9, r
    fig = plot_feature_similarity(res.sae, syn)
    assert abs(np.diag(fig.data[0].z[:32]).mean() - r.mcc) < 1e-3

# ---------------------------------------------------------------- sweeps

def test_sweep_and_failure_signs(tmp_path):
    x, xe = sparse_data(2048), sparse_data(1024, seed=1)
    scfg = SweepConfig(base=small_cfg(steps=60, checkpoint_every=0), grid={'k': [2, 12], 'd_sae': [32]})
    df = sweep(scfg, x, xe, run_root=tmp_path / 'sw', progress=False)
    assert len(df) == 2 and (tmp_path / 'sw' / 'k=2_d_sae=32' / 'sae' / 'cfg.json').exists()
    assert 'too dense' in df.set_index('k').loc[12, 'signs']
    row = dict(l0=1, dense_fraction=0, dead_fraction=0.9)
    assert failure_signs(row, None, scfg, 16) == ['too many dead']
    falling = pd.DataFrame({'loss': np.linspace(10, 1, 20)})
    assert failure_signs(dict(l0=1, dense_fraction=0, dead_fraction=0), falling, scfg, 16) == ['undertrained']
    assert len(plot_pareto(df).data) >= 1

# ---------------------------------------------------------------- bad input

def test_d_in_mismatch(tmp_path):
    st = write_store(tmp_path / 's', {HOOK: sparse_data(512)})
    with pytest.raises(ConfigError, match='d_in=16'):
        train_sae(small_cfg(d_in=32), StoreProvider(st, batch_size=128), progress=False)

def test_empty_filter_and_missing_clean(tmp_path):
    meta = pd.DataFrame({'example_id': range(512), 'corruption_type': 'id_control'})
    st = write_store(tmp_path / 's', {HOOK: sparse_data(512)}, meta)
    with pytest.raises(ValueError, match='selects no rows'): StoreProvider(st, subset='ood', batch_size=8)
    with pytest.raises(ValueError, match='also_clean=True'): StoreProvider(st, subset='clean', batch_size=8)
    with pytest.raises(ValueError, match='subset must be'): StoreProvider(st, subset='dirty', batch_size=8)

def test_nonfinite_loss_keeps_last_good_checkpoint(tmp_path):
    x = sparse_data(2048)
    class Poisoned(TensorProvider):
        def batches(self, skip=0):
            for i, b in enumerate(super().batches(skip), start=skip):
                yield b * float('nan') if i == 90 else b
    cfg = small_cfg(normalize=False)
    with pytest.raises(NonFiniteLossError, match=r'step 91.*step_00000080'):
        train_sae(cfg, Poisoned(x, 128), tmp_path / 'run', progress=False)
    ck = tmp_path / 'run' / 'checkpoints'
    assert sorted(p.name for p in ck.iterdir()) == ['step_00000040', 'step_00000080']
    # the checkpoint is a SAELens training save, written before the bad step: its weights are finite
    from safetensors.torch import load_file
    assert all(torch.isfinite(v).all() for v in load_file(ck / 'step_00000080' / 'sae_weights.safetensors').values())

def test_deferred_loss_reads_still_name_the_first_bad_step(tmp_path, monkeypatch):
    """On an accelerator the loss is read on the host only at log, checkpoint and end steps (one sync each), not every
    step. Forced on here: the error still names the first non-finite step and no checkpoint holds its state."""
    from actlab.saes import LocalSAETrainer
    reads = []
    orig = LocalSAETrainer._check_finite
    def spy(self, pending):
        if pending: reads.append(pending[-1][0])
        return orig(self, pending)
    monkeypatch.setattr(LocalSAETrainer, '_check_finite', spy)
    monkeypatch.setattr(LocalSAETrainer, 'finite_check_every', 25)
    x = sparse_data(2048)
    cfg = small_cfg(normalize=False, log_every=60)  # checkpoints every 40 steps, 120 steps
    train_sae(cfg, TensorProvider(x, 128), tmp_path / 'ok', progress=False)
    assert reads == [25, 40, 60, 80, 105, 120], reads  # every 25 unread steps, and at each checkpoint, log and the last step
    class Poisoned(TensorProvider):
        def batches(self, skip=0):
            for i, b in enumerate(super().batches(skip), start=skip):
                yield b * float('nan') if i == 90 else b
    with pytest.raises(NonFiniteLossError, match=r'step 91.*step_00000080'):
        train_sae(cfg, Poisoned(x, 128), tmp_path / 'bad', progress=False)
    assert sorted(p.name for p in (tmp_path / 'bad' / 'checkpoints').iterdir()) == ['step_00000040', 'step_00000080']
    h = read_history(tmp_path / 'bad')
    assert h.step.max() == 60 and np.isfinite(h.loss).all()  # logged at 60; the read at step 105 stopped it before any later log

def test_as_sae_transformer_keeps_weights(tmp_path):
    from transformer_lens import HookedTransformer
    m = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=16, d_head=8, n_heads=2, d_mlp=32, n_ctx=12, d_vocab=40,
                                                  act_fn='relu', seed=0))
    m.actlab_identity = dict(name='m', weights_hash='h')
    s = as_sae_transformer(m)
    assert isinstance(s, HookedSAETransformer) and s.actlab_identity == m.actlab_identity
    toks = torch.randint(0, 40, (64, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(): assert torch.allclose(s(toks), m(toks))
    _, cache = s.run_with_cache(toks, names_filter=HOOK)
    train_sae(small_cfg(steps=10, checkpoint_every=0), cache[HOOK].reshape(-1, 16), tmp_path / 'r', hook_name=HOOK, progress=False)
    with torch.no_grad(): s.run_with_saes(toks, saes=[load_sae(tmp_path / 'r')])

def test_wandb_only_when_asked(tmp_path, monkeypatch):
    import wandb
    logged, calls = [], []
    monkeypatch.setattr(wandb, 'init', lambda **k: calls.append('init'))
    monkeypatch.setattr(wandb, 'finish', lambda *a, **k: calls.append('finish'))
    monkeypatch.setattr(wandb, 'log', lambda d, step=None, **k: logged.append(step))
    monkeypatch.setattr(wandb, 'log_artifact', lambda *a, **k: calls.append('artifact'))
    train_sae(small_cfg(steps=40, checkpoint_every=0), sparse_data(1024), tmp_path / 'a', progress=False)
    assert logged == []
    res = train_sae(small_cfg(steps=40, checkpoint_every=20, wandb=True), sparse_data(1024), tmp_path / 'b', progress=False)
    assert res.finished and logged == [10, 20, 30, 40] and calls[0] == 'init' and calls[-1] == 'finish' and 'artifact' in calls
    assert len(read_history(tmp_path / 'b')) == 4  # the local history is kept as well

def test_pretrained_needs_the_hub():
    from actlab.models import _hub_reachable
    if _hub_reachable(): pytest.skip('a hub is reachable here')
    with pytest.raises(ConnectionError, match='not reachable'): load_sae('gpt2-small-res-jb', sae_id='blocks.0.hook_resid_pre')

def test_metrics_from_store_subsets(tmp_path):
    x = sparse_data(1024)
    meta = pd.DataFrame({'example_id': range(1024), 'corruption_type': ['id_control', 'junk_words'] * 512})
    st = write_store(tmp_path / 's', {HOOK: x}, meta)
    res = train_sae(small_cfg(steps=30, checkpoint_every=0), StoreProvider(st, batch_size=128), progress=False)
    m_ood = sae_metrics(res.sae, StoreProvider(st, subset='ood', batch_size=128))
    assert m_ood['n'] == 512
    ref = sae_metrics(res.sae, x[1::2])
    assert abs(m_ood['mse'] - ref['mse']) < 1e-5


def test_heldout_split_and_recovery_by_hand():
    "The held-out split never splits a clean prompt; per-example recovery is (sae - zero) / (orig - zero), degenerate rows flagged."
    from actlab.sae_eval import grouped_holdout, example_recovery, recovery_summary
    g = np.repeat(np.arange(300), 4)
    h = grouped_holdout(g, 0.25, seed=3)
    assert pd.Series(h).groupby(g).nunique().max() == 1 and 0.15 < h.mean() < 0.35
    ld = pd.DataFrame(dict(example_id=range(6), problem_id=[0, 0, 1, 1, 2, 2], kind=['clean', 'corrupted'] * 3,
                           corruption_type=['id_control', 'junk_words'] * 3, ld_orig=[2., 4., 6., 1., 3., 5.],
                           ld_sae=[2., 2., 7., 1., 3., 5.], ld_zero=[0., 0., 1., 0.99, 1., 1.]))
    ex = example_recovery(ld)
    expect = [(s - z) / (o - z) for o, s, z in zip(ld.ld_orig, ld.ld_sae, ld.ld_zero)]
    np.testing.assert_allclose(ex.frac_recovered[~ex.degenerate], np.array(expect)[~ex.degenerate.to_numpy()])
    assert ex.degenerate.tolist() == [False, False, False, True, False, False]
    s = recovery_summary(ex, n_boot=100)
    assert s['by_condition']['all']['median'] == np.median([1.0, 0.5, 1.2, 1.0, 1.0])
    assert s['by_condition']['clean']['median'] == 1.0 and s['by_condition']['ood']['median'] == 0.75
    assert s['by_condition']['ood']['n_degenerate'] == 1 and s['flags'] == []
    low = recovery_summary(ex, flag_above=0.9, n_boot=100)  # medians 1.0 (all, clean) exceed 0.9; 0.75 (corrupted, ood) do not
    assert [f['metric'] for f in low['flags']] == ['task_recovery.all', 'task_recovery.clean']


def test_heldout_claims_random_weights_do_not_hold():
    "A random-weight model and an SAE trained a few steps: the held-out faithfulness claims return 'does not hold'."
    from actlab.patching import tiny_model
    from actlab.tasks import TaskConfig, make_pairs, build_word_tokenizer
    from actlab.capture import pair_activations
    from actlab.sae_eval import heldout_eval, heldout_claims, grouped_holdout
    tok = build_word_tokenizer()
    model = tiny_model(n_layers=2, d_model=32, d_vocab=len(tok)); model.set_tokenizer(tok, default_padding_side='right')
    pairs = make_pairs(TaskConfig(families=('id_control', 'junk_words'), suffix_lengths=(2,), n_per_cell=40), tok)
    hook = 'blocks.1.hook_resid_pre'
    held = grouped_holdout(pairs.df.problem_id, 0.3)
    x = pair_activations(model, pairs, [hook], 'corrupted')[hook].float()
    sae = train_sae(SAETrainConfig(d_sae=256, k=2, steps=5, batch_size=16, log_every=5, checkpoint_every=0), x[~held],
                    hook_name=hook, progress=False).sae
    text = torch.randint(1, len(tok), (16, 12))
    h = heldout_eval(model, sae, x[held], pairs.filter(example_id=pairs.df.example_id[held].tolist()), text, n_boot=200)
    claims = {c.name: c for c in heldout_claims(h)}
    assert set(claims) == {'sae_few_dead_latents', 'sae_keeps_task_logit_diff', 'sae_recovers_lm_loss'}
    assert not claims['sae_keeps_task_logit_diff'].holds and not claims['sae_recovers_lm_loss'].holds, claims
    assert h['n_clean_prompts'] == pairs.df.problem_id[held].nunique()


# ---------------------------------------------------------------- bfloat16 stores, devices

def test_sae_trains_end_to_end_from_a_bfloat16_store(tmp_path, lm_and_pairs):
    "extract (bfloat16) -> StoreProvider -> train_sae on cpu: the batches are the float32 store's rounded to bfloat16, bit for bit,"
    " and the SAE equals one trained on a float32 store of those rounded values."
    from actlab.extract import extract, ExtractConfig
    from actlab.sae_eval import store_vectors
    lm, pairs = lm_and_pairs
    cfg = ExtractConfig(hooks=(HOOK,), positions='all', also_clean=True, compute_labels=False, progress=False, rows_per_shard=64)
    f32 = extract(lm, pairs, tmp_path / 'f32', cfg)
    b16 = extract(lm, pairs, tmp_path / 'b16', cfg.replace(dtype='bfloat16'))
    pa_, pb = StoreProvider(f32, HOOK, batch_size=32, seed=1), StoreProvider(b16, HOOK, batch_size=32, seed=1, device='cpu')
    a, b = list(itertools.islice(pa_.batches(), 20)), list(itertools.islice(pb.batches(), 20))
    assert all(y.dtype == torch.float32 and torch.equal(y, x.to(torch.bfloat16).float()) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, b))  # it really rounded
    raw = list(itertools.islice(StoreProvider(b16, HOOK, batch_size=32, seed=1, dtype=None).batches(), 3))
    assert all(r.dtype == torch.bfloat16 and torch.equal(r.float(), y) for r, y in zip(raw, b))
    # store_vectors: float32 by default (exact), the store's own bfloat16 on request
    v32, v16 = store_vectors(b16, HOOK), store_vectors(b16, HOOK, dtype=None)
    assert v16.dtype == torch.bfloat16 and torch.equal(v16.float(), v32)
    assert torch.equal(v32, store_vectors(f32, HOOK).to(torch.bfloat16).float())
    # training: the bfloat16 store against a float32 store of the same rounded values in the same shard layout
    acfg = ExtractConfig(hooks=(HOOK,), compute_labels=False, progress=False, rows_per_shard=64, dtype='bfloat16')
    ab = extract(lm, pairs, tmp_path / 'ab16', acfg)
    rounded = write_store(tmp_path / 'rounded', {HOOK: ab.tensor(HOOK, dtype=torch.float32)}, rows_per_shard=64)
    assert rounded.dtype(HOOK) == 'float32' and [len(x) for x in rounded.token_vectors(HOOK)] == [len(x) for x in ab.token_vectors(HOOK)]
    tcfg = small_cfg(steps=40, batch_size=32, checkpoint_every=0, device='cpu')
    res = train_sae(tcfg, StoreProvider(ab, HOOK, batch_size=32, seed=2), tmp_path / 'run_b16', progress=False)
    ref = train_sae(tcfg, StoreProvider(rounded, HOOK, batch_size=32, seed=2), tmp_path / 'run_ref', progress=False)
    assert res.finished and res.trainer.n_training_steps == 40 and res.sae.W_dec.abs().sum() > 0
    assert states_equal(res.sae, ref.sae)


def test_store_provider_device_and_pinning_on_the_cpu(tmp_path):
    from actlab.store import StoreError
    st = write_store(tmp_path / 's', {HOOK: sparse_data(600)}, rows_per_shard=200)
    a = list(itertools.islice(StoreProvider(st, batch_size=64, seed=3).batches(), 8))
    b = list(itertools.islice(StoreProvider(st, batch_size=64, seed=3, device='cpu', pin_memory=None).batches(), 8))
    assert all(torch.equal(x, y) and not y.is_pinned() for x, y in zip(a, b))  # None on the cpu: not pinned, the same batches
    assert isinstance(as_provider(st, 64, device='cpu'), StoreProvider) and as_provider(st, 64, device='cpu').device == 'cpu'
    if not torch.cuda.is_available():
        with pytest.raises(StoreError, match='pin_memory=True needs CUDA'): StoreProvider(st, batch_size=64, pin_memory=True)
