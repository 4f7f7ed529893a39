"Integration tests for actlab.extract: sites, correctness against run_with_cache, labels, stop_at_layer, crash/resume, workers."
import errno, os, signal, subprocess, sys, textwrap, time
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from actlab.extract import (extract, ExtractConfig, Site, check_sites, recipe_sites, top_sites, worker_rows, HookNameError,
                            model_identity)
from actlab.store import ActivationStore, StoreConfigError, StoreWriteError, combine
from actlab.tasks import TaskConfig, make_pairs, build_word_tokenizer

ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
ROOT = Path(__file__).resolve().parents[1]

BUILD = '''
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from actlab.tasks import TaskConfig, make_pairs, build_word_tokenizer

def build(n_per_cell=3, lengths=(1, 2)):
    tok = build_word_tokenizer()
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=32, d_vocab=len(tok),
                                  act_fn='gelu', normalization_type='LN', seed=0)
    model = HookedTransformer(cfg, tokenizer=tok).eval()
    return model, make_pairs(TaskConfig(n_per_cell=n_per_cell, suffix_lengths=lengths), tok)
'''
exec(BUILD)  # defines build()

@pytest.fixture(scope='module')
def mp():
    return build()

def ids(store): return sorted(store.metadata().example_id.tolist())

def test_unknown_hook_lists_close_matches(mp):
    model, pairs = mp
    with pytest.raises(HookNameError, match=r"close matches: \['blocks.1.hook_resid_mid'"):
        check_sites(model, ['blocks.1.hook_resid_mdi'])
    with pytest.raises(HookNameError, match='close matches'):
        extract(model, pairs, '/tmp/never-written', ExtractConfig(hooks=('blocks.0.attn.hook_zz',)))
    assert not Path('/tmp/never-written').exists()
    with pytest.raises(HookNameError, match='not per position'): check_sites(model, ['blocks.0.attn.hook_pattern'])

def test_recipes_and_top_sites(mp):
    model, _ = mp
    assert recipe_sites(model, 2) == ['blocks.0.hook_resid_pre', 'blocks.1.hook_resid_pre']
    assert recipe_sites(model, 0, heads=[(0, 1)], head_hook='hook_result') == ['blocks.0.attn.hook_result:1']
    res = pd.DataFrame({'hook_name': ['blocks.0.hook_resid_mid', 'blocks.1.hook_attn_out', 'blocks.1.hook_attn_out'],
                        'pos': [3, 3, 4], 'mean_rescue': [0.2, 0.1, 0.8]})
    assert top_sites(res, k=1) == ['blocks.1.hook_attn_out']
    assert top_sites(res, k=2, agg='mean') == ['blocks.1.hook_attn_out', 'blocks.0.hook_resid_mid']
    arr = {'resid_mid': np.array([[0.0, 0.9], [0.1, 0.2]]), 'attn_out': np.array([[0.3, 0.0], [0.0, 0.5]])}
    assert top_sites(arr, k=2) == ['blocks.0.hook_resid_mid', 'blocks.1.hook_attn_out']
    with pytest.raises(ValueError, match='hook column'): top_sites(pd.DataFrame({'x': [1]}))

def test_matches_run_with_cache_and_labels(mp, tmp_path):
    model, pairs = mp
    sites = ('blocks.1.hook_resid_pre', 'blocks.0.hook_attn_out', 'blocks.1.attn.hook_z:3', 'blocks.0.attn.hook_result:1')
    st = extract(model, pairs, tmp_path / 's', ExtractConfig(hooks=sites, rows_per_shard=7, batch_size=5, progress=False))
    assert not model.cfg.use_attn_result  # switched back off
    meta = st.metadata()
    assert ids(st) == sorted(pairs.df.example_id) and meta.example_id.is_unique
    for c in list(pairs.df.columns) + ['logit_diff_clean', 'logit_diff_corrupted', 'survives', 'rescue_score', 'best_patch_site', 'failure_class']:
        assert c in meta, c
    row = {e: i for i, e in enumerate(meta.example_id)}
    model.set_use_attn_result(True)
    try:
        for g in pairs.groups():
            r = [row[e] for e in g.df.example_id]
            with torch.no_grad():
                lc, cache = model.run_with_cache(g.tokens('corrupted'))
                ll = model(g.tokens('clean'))
            ar = torch.arange(len(g))
            np.testing.assert_allclose(st.numpy('blocks.1.hook_resid_pre')[r], cache['blocks.1.hook_resid_pre'][:, -1], atol=1e-5)
            np.testing.assert_allclose(st.numpy('blocks.0.hook_attn_out')[r], cache['blocks.0.hook_attn_out'][:, -1], atol=1e-5)
            np.testing.assert_allclose(st.numpy('blocks.1.attn.hook_z:3')[r], cache['blocks.1.attn.hook_z'][:, -1, 3], atol=1e-5)
            np.testing.assert_allclose(st.numpy('blocks.0.attn.hook_result:1')[r], cache['blocks.0.attn.hook_result'][:, -1, 1], atol=1e-5)
            ldc = (lc[ar, -1, g.answer_ids] - lc[ar, -1, g.distractor_ids]).numpy()
            ldl = (ll[ar, -1, g.answer_ids] - ll[ar, -1, g.distractor_ids]).numpy()
            np.testing.assert_allclose(meta.logit_diff_corrupted.to_numpy()[r], ldc, atol=1e-4)
            np.testing.assert_allclose(meta.logit_diff_clean.to_numpy()[r], ldl, atol=1e-4)
            assert (meta.survives.to_numpy()[r] == (lc[:, -1].argmax(-1) == g.answer_ids).numpy()).all()  # survives = argmax correct
    finally: model.set_use_attn_result(False)
    m = st.manifest
    assert m['model']['weights_hash'] == model_identity(model)['weights_hash']
    assert m['config']['task'] == pairs.cfg.to_dict() and m['config']['extract']['hooks'] == list(sites)
    assert m['columns']['blocks.1.attn.hook_z:3']['shape'] == [8]

def test_selective_stops_early_and_given_labels(mp, tmp_path):
    model, pairs = mp
    calls = []
    h = model.blocks[1].hook_resid_pre.add_hook(lambda x, hook: calls.append(1), is_permanent=True)
    lab = pd.DataFrame({'example_id': pairs.df.example_id, 'logit_diff_clean': 2.0, 'logit_diff_corrupted': -0.5,
                        'rescue_score': 0.25, 'best_patch_site': 'blocks.0.hook_attn_out'})
    try:
        st = extract(model, pairs, tmp_path / 's', ExtractConfig(hooks=('blocks.0.hook_resid_mid',), progress=False), labels=lab)
    finally: model.reset_hooks(including_permanent=True)
    assert st.manifest['config']['stop_at_layer'] == 1 and calls == []  # block 1 never ran
    meta = st.metadata()
    assert (meta.survives == False).all() and (meta.rescue_score == 0.25).all() and set(meta.failure_class) == {''}
    assert set(meta.best_patch_site) == {'blocks.0.hook_attn_out'}

def test_positions_and_dtype(mp, tmp_path):
    model, pairs = mp
    a = extract(model, pairs, tmp_path / 'a', ExtractConfig(hooks=('blocks.1.hook_resid_pre',), progress=False))
    k = extract(model, pairs, tmp_path / 'k', ExtractConfig(hooks=('blocks.1.hook_resid_pre',), positions='last_k', k=3,
                                                          dtype='float16', progress=False))
    al = extract(model, pairs, tmp_path / 'al', ExtractConfig(hooks=('blocks.1.hook_resid_pre',), positions='all', progress=False))
    assert k.shape('blocks.1.hook_resid_pre') == (3, 32)
    np.testing.assert_allclose(k.numpy('blocks.1.hook_resid_pre')[:, -1], a.numpy('blocks.1.hook_resid_pre'), atol=2e-2)
    meta = al.metadata()
    x = al.numpy('blocks.1.hook_resid_pre')
    last = x[np.arange(len(x)), meta.n_tokens.to_numpy() - 1]
    np.testing.assert_allclose(last, a.numpy('blocks.1.hook_resid_pre'), atol=1e-5)
    mask = np.stack(meta.token_mask.to_numpy())
    assert (mask.sum(1) == meta.n_tokens).all() and (x[~mask] == 0).all()
    with pytest.raises(Exception, match='longer than the shortest prompt'):
        extract(model, pairs, tmp_path / 'kk', ExtractConfig(hooks=('blocks.1.hook_resid_pre',), positions='last_k', k=99))

def test_refuses_other_config_and_resumes_same(mp, tmp_path):
    model, pairs = mp
    cfg = ExtractConfig(hooks=('blocks.1.hook_resid_pre',), rows_per_shard=10, progress=False)
    extract(model, pairs, tmp_path / 's', cfg)
    with pytest.raises(StoreConfigError, match="extract.hooks"):
        extract(model, pairs, tmp_path / 's', cfg.replace(hooks=('blocks.0.hook_resid_pre',)))
    with pytest.raises(StoreConfigError, match='pairs_digest'):
        extract(model, make_pairs(TaskConfig(n_per_cell=3, suffix_lengths=(1, 2), seed=1), model.tokenizer), tmp_path / 's', cfg)
    other, _ = build()
    with torch.no_grad(): other.W_U.add_(1.0)
    with pytest.raises(StoreConfigError, match='weights_hash'): extract(other, pairs, tmp_path / 's', cfg)
    assert len(extract(model, pairs, tmp_path / 's', cfg.replace(batch_size=3))) == len(pairs)  # batch size may change

def test_nonfinite(mp, tmp_path):
    model, pairs = mp
    def nan(x, hook): x[0, -1, :2] = float('inf'); return x
    model.add_hook('blocks.0.hook_resid_post', nan, is_permanent=True)
    try:
        cfg = ExtractConfig(hooks=('blocks.1.hook_resid_pre',), rows_per_shard=10, progress=False)
        with pytest.warns(UserWarning, match='non-finite'): st = extract(model, pairs, tmp_path / 'c', cfg)
        assert st.manifest['nonfinite']['blocks.1.hook_resid_pre'] > 0
        with pytest.raises(FloatingPointError, match='non-finite'): extract(model, pairs, tmp_path / 'r', cfg.replace(on_nonfinite='raise'))
    finally: model.reset_hooks(including_permanent=True)
    assert not list((tmp_path / 'r' / 'data').glob('*.parquet'))  # nothing half-stored

def test_full_disk_mid_extraction_then_resume(mp, tmp_path):
    model, pairs = mp
    import actlab.store
    real, n = actlab.store._write_table, []
    def flaky(t, path):
        n.append(1)
        if len(n) == 3: raise OSError(errno.ENOSPC, 'No space left on device')
        real(t, path)
    cfg = ExtractConfig(hooks=('blocks.1.hook_resid_pre',), rows_per_shard=5, progress=False)
    with mock.patch('actlab.store._write_table', flaky):
        with pytest.raises(StoreWriteError, match='disk is full'): extract(model, pairs, tmp_path / 's', cfg)
    assert len(list((tmp_path / 's' / 'data').glob('*.parquet'))) == 2 and not list((tmp_path / 's' / 'data').glob('.*'))
    st = extract(model, pairs, tmp_path / 's', cfg)
    assert ids(st) == sorted(pairs.df.example_id) and st.metadata().example_id.is_unique

def test_unwritable_path(mp, tmp_path):
    model, pairs = mp
    (tmp_path / 'f').write_text('a file')
    with pytest.raises(StoreWriteError, match='cannot write'):
        extract(model, pairs, tmp_path / 'f' / 'store', ExtractConfig(hooks=('blocks.1.hook_resid_pre',), progress=False))

CHILD = BUILD + '''
import sys, time
import actlab.store
from actlab.extract import extract, ExtractConfig
real = actlab.store._write_table
def slow(t, path):  # slow the writes down so the parent can kill us part-way
    real(t, path); time.sleep(0.4)
actlab.store._write_table = slow
model, pairs = build(n_per_cell=8, lengths=(1, 2, 4))
extract(model, pairs, sys.argv[1], ExtractConfig(hooks=('blocks.1.hook_resid_pre', 'blocks.0.attn.hook_z:1'), rows_per_shard=12,
        progress=False))
print('FINISHED')
'''

def test_crash_and_resume(tmp_path):
    "Kill an extraction (SIGKILL) after its 2nd shard, resume it, and find every example exactly once."
    path = tmp_path / 'store'
    proc = subprocess.Popen([sys.executable, '-c', CHILD, str(path)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    try:
        while len(list((path / 'data').glob('*.parquet'))) < 2:
            assert proc.poll() is None, f'child ended early: {proc.communicate()}'
            assert time.time() - t0 < 240, 'child too slow'
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = sorted((path / 'data').glob('*.parquet'))
    model, pairs = build(n_per_cell=8, lengths=(1, 2, 4))
    n_shards = -(-len(pairs) // 12)
    assert 2 <= len(done) < n_shards, 'the kill should land part-way'
    with pytest.raises(Exception, match='incomplete'): ActivationStore(path)
    before = {f.name: f.stat().st_mtime_ns for f in done}
    st = extract(model, pairs, path, ExtractConfig(hooks=('blocks.1.hook_resid_pre', 'blocks.0.attn.hook_z:1'), rows_per_shard=12,
                                                   progress=False))
    assert all((path / 'data' / n).stat().st_mtime_ns == t for n, t in before.items())  # complete shards were not redone
    meta = st.metadata()
    assert len(meta) == len(pairs) and meta.example_id.is_unique and ids(st) == sorted(pairs.df.example_id)
    ref = extract(model, pairs, tmp_path / 'ref', ExtractConfig(hooks=('blocks.1.hook_resid_pre', 'blocks.0.attn.hook_z:1'),
                                                                rows_per_shard=1000, progress=False))
    o1, o2 = np.argsort(meta.example_id.to_numpy()), np.argsort(ref.metadata().example_id.to_numpy())
    np.testing.assert_allclose(st.numpy('blocks.0.attn.hook_z:1')[o1], ref.numpy('blocks.0.attn.hook_z:1')[o2], atol=1e-6)

def test_kill_mid_shard_write(tmp_path):
    "A process killed while a shard file is half written leaves no readable trace of that shard."
    path = tmp_path / 'store'
    child = BUILD + '''
import os, signal, sys
import pyarrow.parquet as pq
import actlab.store
from actlab.extract import extract, ExtractConfig
n = []
def dying(t, path):
    n.append(1)
    if len(n) == 2:
        with open(path, 'wb') as f: f.write(b'PAR1' + b'0' * 1000); f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    pq.write_table(t, path)
actlab.store._write_table = dying
model, pairs = build()
extract(model, pairs, sys.argv[1], ExtractConfig(hooks=('blocks.1.hook_resid_pre',), rows_per_shard=10, progress=False))
'''
    r = subprocess.run([sys.executable, '-c', child, str(path)], env=ENV, capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert len(list((path / 'data').glob('*.parquet'))) == 1 and len(list((path / 'data').glob('.*.tmp'))) == 1
    with pytest.warns(UserWarning): assert len(ActivationStore(path, allow_incomplete=True)) == 10
    model, pairs = build()
    st = extract(model, pairs, path, ExtractConfig(hooks=('blocks.1.hook_resid_pre',), rows_per_shard=10, progress=False))
    assert st.metadata().example_id.is_unique and ids(st) == sorted(pairs.df.example_id)

def test_two_worker_processes_combine(mp, tmp_path):
    "shard i of n: two workers as separate processes, side by side; combined = single-worker store."
    child = BUILD + '''
import sys
from actlab.extract import extract, ExtractConfig
model, pairs = build()
extract(model, pairs, sys.argv[1], ExtractConfig(hooks=('blocks.1.hook_resid_pre',), rows_per_shard=8,
        shard_index=int(sys.argv[2]), num_shards=2, progress=False))
'''
    procs = [subprocess.Popen([sys.executable, '-c', child, str(tmp_path / f'w{i}'), str(i)], env=ENV, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs: assert p.wait() == 0, p.stderr.read()[-2000:]
    st = combine([tmp_path / 'w0', tmp_path / 'w1'], tmp_path / 'all')
    model, pairs = mp
    one = extract(model, pairs, tmp_path / 'one', ExtractConfig(hooks=('blocks.1.hook_resid_pre',), progress=False))
    assert ids(st) == ids(one) and st.metadata().example_id.is_unique
    o1, o2 = np.argsort(st.metadata().example_id.to_numpy()), np.argsort(one.metadata().example_id.to_numpy())
    np.testing.assert_allclose(st.numpy('blocks.1.hook_resid_pre')[o1], one.numpy('blocks.1.hook_resid_pre')[o2], atol=1e-6)
    parts = [set(worker_rows(pairs.df, i, 2).example_id) for i in range(2)]
    assert not (parts[0] & parts[1])

def test_readers_for_probes_and_saes(mp, tmp_path):
    model, pairs = mp
    st = extract(model, pairs, tmp_path / 's', ExtractConfig(hooks=('blocks.1.hook_resid_pre',), rows_per_shard=10, progress=False))
    x = st.numpy('blocks.1.hook_resid_pre', where={'corruption_type': 'junk_words'})
    assert x.shape == ((pairs.df.corruption_type == 'junk_words').sum(), 32)
    y = st.metadata().survives.to_numpy(dtype=bool)
    assert y.dtype == bool
    b = next(st.sae_provider('blocks.1.hook_resid_pre', batch_size=16))
    assert b.shape == (16, 32) and b.dtype == torch.float32
    st.set_labels(pd.DataFrame({'example_id': pairs.df.example_id[:3], 'failure_class': 'erased'}))
    assert (ActivationStore(st.path).metadata().failure_class == 'erased').sum() == 3

@pytest.mark.skipif(not (ROOT / 'data' / 'default_model' / 'config.json').exists(), reason='built-in model not trained yet')
def test_default_model(tmp_path):
    from actlab.models import load_saved_model  # never trains (load_model() would, when the cache is missing)
    model = load_saved_model(ROOT / 'data' / 'default_model', device='cpu')
    pairs = make_pairs(TaskConfig(n_per_cell=5), model.tokenizer)
    L = model.cfg.n_layers
    st = extract(model, pairs, tmp_path / 's', ExtractConfig(hooks=tuple(recipe_sites(model, 1, resid_mid_layers=[L - 1])), progress=False))
    assert ids(st) == sorted(pairs.df.example_id)
    meta = st.metadata()
    # the trained model gets the in-distribution controls mostly right
    assert (meta[meta.corruption_type == 'id_control'].logit_diff_clean > 0).mean() > 0.5


def test_bfloat16_model_extracts_float32_close_to_the_float32_model(mp, tmp_path):
    "A model run in bfloat16 (as on a GPU) extracts through the same path; the store holds float32 near the float32 model's values."
    model, pairs = mp
    m16 = build()[0].to(torch.bfloat16)
    assert next(m16.parameters()).dtype == torch.bfloat16
    cfg = ExtractConfig(hooks=('blocks.1.hook_resid_pre',), progress=False)
    a = extract(model, pairs, tmp_path / 'f32', cfg)
    b = extract(m16, pairs, tmp_path / 'bf16', cfg)
    x, y = a.numpy('blocks.1.hook_resid_pre'), b.numpy('blocks.1.hook_resid_pre')
    assert y.dtype == np.float32 and np.isfinite(y).all()
    assert not np.array_equal(x, y)  # it really ran in bfloat16
    np.testing.assert_allclose(y, x, atol=0.1 * np.abs(x).max())  # bfloat16 keeps 8 bits of mantissa
    ld_a, ld_b = (s.metadata().sort_values('example_id').logit_diff_corrupted.to_numpy() for s in (a, b))
    assert np.isfinite(ld_b).all() and np.corrcoef(ld_a, ld_b)[0, 1] > 0.9


# --- bfloat16 stores
@pytest.mark.skipif(not (ROOT / 'data' / 'default_model' / 'config.json').exists(), reason='built-in model not trained yet')
def test_bfloat16_store_of_the_builtin_model_is_the_float32_store_rounded(tmp_path):
    "Same model, same pairs: the bfloat16 store holds the float32 store's activations rounded to bfloat16, in half the bytes."
    from actlab.models import load_saved_model
    model = load_saved_model(ROOT / 'data' / 'default_model', device='cpu')
    pairs = make_pairs(TaskConfig(n_per_cell=3), model.tokenizer)
    L = model.cfg.n_layers
    cfg = ExtractConfig(hooks=tuple(recipe_sites(model, 1, resid_mid_layers=[L - 1], heads=[(L - 1, 0)])), also_clean=True,
                        rows_per_shard=64, progress=False)
    f32 = extract(model, pairs, tmp_path / 'f32', cfg)
    b16 = extract(model, pairs, tmp_path / 'b16', cfg.replace(dtype='bfloat16'))
    assert len(b16.activation_columns) == 2 * 3
    for c in f32.activation_columns:
        assert b16.dtype(c) == 'bfloat16'
        assert torch.equal(b16.tensor(c).view(torch.int16), f32.tensor(c).to(torch.bfloat16).view(torch.int16)), c
    pd.testing.assert_frame_equal(b16.metadata(), f32.metadata())  # labels: computed before storing, the same numbers
    act = lambda s: sum(v for c, v in s.disk_bytes().items() if c in s.columns)
    assert 0.45 < act(b16) / act(f32) < 0.55


def test_bfloat16_bad_dtype_is_one_line_before_any_work(tmp_path):
    with pytest.raises(Exception, match="dtype must be one of 'float32', 'float16', 'bfloat16', got 'bf16'"):
        ExtractConfig(hooks=('blocks.0.hook_resid_pre',), dtype='bf16')
    bad = tmp_path / 'bad.yaml'; bad.write_text("extraction:\n  dtype: bf16\n")
    r = subprocess.run([sys.executable, '-m', 'actlab.cli', 'run', str(bad), '--out', str(tmp_path / 'out')],
                       capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "dtype must be one of" in r.stderr
    assert not (tmp_path / 'out').exists() or not any((tmp_path / 'out').rglob('*.parquet'))


def test_probes_read_a_bfloat16_store(mp, tmp_path):
    "The probes' streaming fit takes the store's bfloat16 batches; it gives the fit of the same values widened to float32."
    from actlab.probes import L1LogisticProbe
    model, pairs = mp
    st = extract(model, pairs, tmp_path / 'b', ExtractConfig(hooks=('blocks.1.hook_resid_pre',), dtype='bfloat16', progress=False))
    col = 'blocks.1.hook_resid_pre'
    y = (st.metadata().example_id.to_numpy() % 2 == 0)
    st.set_labels(pd.DataFrame({'example_id': st.metadata().example_id, 'parity': y.astype(float)}))
    fits = []
    for dt in (None, torch.float32):
        dl = st.dataloader(col, labels=['parity'], batch_size=16, shuffle=False, dtype=dt)
        assert next(iter(dl))[col].dtype == (dt or torch.bfloat16)
        fits.append(L1LogisticProbe(solver='torch', tol=1e-4).fit_stream(dl, classes=[0.0, 1.0], x_key=col, y_key='parity'))
    assert np.abs(fits[1].coef_).sum() > 0  # a real fit, not all-zero weights
    np.testing.assert_array_equal(fits[0].coef_, fits[1].coef_)
    X = st.numpy(col)
    np.testing.assert_array_equal(X, st.tensor(col).float().numpy())


@pytest.mark.skipif(not (ROOT / 'data' / 'default_model' / 'config.json').exists(), reason='built-in model not trained yet')
def test_gpu_smoke_skips_on_cpu_and_runs_its_rows_on_cpu_when_asked():
    "bench/gpu_smoke.py: one line and exit 0 without CUDA; with --device cpu the same rows run (the script checked, not the GPU)."
    script = ROOT / 'bench' / 'gpu_smoke.py'
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env={**ENV, 'CUDA_VISIBLE_DEVICES': ''})
    assert r.returncode == 0 and r.stdout.strip().splitlines() == ['gpu_smoke: skipped (no CUDA device visible: torch.cuda.is_available() is False)']
    r = subprocess.run([sys.executable, str(script), '--device', 'cpu', '--quick', '--n-per-cell', '2', '--sae-steps', '5',
                        '--skip', 'study', '--skip', 'benches'], capture_output=True, text=True, env={**ENV, 'ACTLAB_NO_TRAIN': '1'})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    import json
    rows = json.loads(next(l for l in r.stdout.splitlines() if l.startswith('RESULT '))[7:])['phases']
    assert {'extract, bfloat16 model and store', 'extract store bytes, bfloat16 / float32', 'bfloat16 store = float32 store rounded',
            'SAE training from the bfloat16 store', 'engine.patch, 4 local shards'} <= set(rows)
    assert rows['extract store bytes, bfloat16 / float32']['value'] < 0.55 and rows['bfloat16 store = float32 store rounded']['value'] == 0


def test_bfloat16_sharded_extraction_combines_to_the_single_run(mp, tmp_path):
    "The engine's shards (local here; a Ray run goes through the same combine) keep the dtype; combined = one process, bit for bit."
    from actlab.engine import EngineConfig, extract as engine_extract
    model, pairs = mp
    cfg = ExtractConfig(hooks=('blocks.1.hook_resid_pre', 'blocks.0.attn.hook_z:1'), dtype='bfloat16', rows_per_shard=7, progress=False)
    one = extract(model, pairs, tmp_path / 'one', cfg)
    three = engine_extract(model, pairs, tmp_path / 'three', cfg, EngineConfig(num_shards=3))
    assert three.manifest.get('combined_from') and all(three.dtype(c) == 'bfloat16' for c in three.columns)
    o1, o3 = (np.argsort(s.metadata().example_id.to_numpy()) for s in (one, three))
    for c in one.columns:
        assert torch.equal(one.tensor(c)[o1].view(torch.int16), three.tensor(c)[o3].view(torch.int16)), c
