"Integration tests for actlab.store: layout, atomic writes, resume, config refusal, failures, readers, combine."
import errno, json, os, stat
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from actlab.store import (StoreWriter, ActivationStore, StoreError, StoreConfigError, StoreWriteError, combine, to_arrow,
                          from_arrow, shard_name, LABEL_COLUMNS)

D = 4

def spec(**kw):
    s = dict(config={'seed': 0}, columns={'x': {'shape': [2, D], 'dtype': 'float32', 'positions': 'last_k'}}, n_rows=10, rows_per_shard=4)
    s.update(kw); return s

def table(rows, dtype=np.float32):
    rows = np.asarray(list(rows))
    x = np.stack([np.full((2, D), r, dtype) for r in rows])
    return pa.table({'example_id': rows, 'corruption_type': np.where(rows % 3 == 0, 'junk_words', 'id_control'),
                     'survives': rows % 2 == 0, 'x': to_arrow(x)})

def fill(path, **kw):
    w = StoreWriter(path, **spec(**kw))
    for j in w.todo(): w.write_shard(j, table(w.rows_of(j)))
    return ActivationStore(w.finish())

def test_layout_and_manifest(tmp_path):
    st = fill(tmp_path / 's')
    names = sorted(p.name for p in (tmp_path / 's' / 'data').iterdir())
    assert names == [shard_name(j) for j in range(3)]
    m = st.manifest
    for k in ('config', 'model', 'columns', 'packages', 'created_at', 'written_at', 'rows_per_shard', 'content_digest'):
        assert k in m, k
    assert m['complete'] and m['rows_per_shard'] == 4 and [s['rows'] for s in m['shards']] == [4, 4, 2]
    assert len(st) == 10 and st.numpy('x').shape == (10, 2, D)
    np.testing.assert_array_equal(st.numpy('x')[:, 0, 0], np.arange(10))

def test_ecosystem_opens_it_directly(tmp_path):
    import datasets
    st = fill(tmp_path / 's')
    files = [str(f) for f in st.files]
    d1 = datasets.Dataset.from_parquet(files, cache_dir=str(tmp_path / 'hf'))
    d2 = datasets.load_dataset('parquet', data_files=files, cache_dir=str(tmp_path / 'hf'))['train']
    d3 = datasets.load_dataset(str(tmp_path / 's'), cache_dir=str(tmp_path / 'hf'))['train']
    for d in (d1, d2, d3):
        assert len(d) == 10 and d.features['x'].length == 2 * D
    assert pd.read_parquet(tmp_path / 's' / 'data').shape[0] == 10
    assert len(st.to_hf(cache_dir=str(tmp_path / 'hf'))) == 10

def test_float16_roundtrip(tmp_path):
    w = StoreWriter(tmp_path / 'h', **spec(columns={'x': {'shape': [2, D], 'dtype': 'float16'}}))
    for j in w.todo(): w.write_shard(j, table(w.rows_of(j), np.float16))
    st = ActivationStore(w.finish())
    assert pa.types.is_float16(pa.parquet.read_schema(st.files[0]).field('x').type.value_type)
    assert st.numpy('x', dtype=np.float16).dtype == np.float16

def test_resume_and_stray_tmp(tmp_path):
    w = StoreWriter(tmp_path / 's', **spec())
    w.write_shard(0, table(w.rows_of(0)))
    (tmp_path / 's' / 'data' / f'.{shard_name(1)}.tmp').write_bytes(b'PAR1 half written')  # a crash mid-write
    with pytest.raises(StoreError, match='incomplete'): ActivationStore(tmp_path / 's')
    with pytest.warns(UserWarning): assert len(ActivationStore(tmp_path / 's', allow_incomplete=True)) == 4  # tmp never read
    w2 = StoreWriter(tmp_path / 's', **spec())
    assert w2.todo() == [1, 2] and not list((tmp_path / 's' / 'data').glob('.*.tmp'))
    for j in w2.todo(): w2.write_shard(j, table(w2.rows_of(j)))
    st = ActivationStore(w2.finish())
    assert sorted(st.metadata().example_id) == list(range(10))

def test_full_disk_on_manifest_update(tmp_path):
    w = StoreWriter(tmp_path / 's', **spec())
    with mock.patch('actlab.store._json_replace', side_effect=OSError(errno.ENOSPC, 'No space left on device')):
        with pytest.raises(StoreWriteError, match='manifest .* could not be updated'): w.write_shard(0, table(w.rows_of(0)))
    assert StoreWriter(tmp_path / 's', **spec()).todo() == [1, 2]  # the complete shard counts

def test_manifest_lagging_disk_is_repaired(tmp_path):
    "A crash between a shard's rename and the manifest update: the shard on disk counts."
    w = StoreWriter(tmp_path / 's', **spec())
    w.write_shard(0, table(w.rows_of(0)))
    with mock.patch.object(StoreWriter, '_update_manifest', lambda self, **kw: None):
        w.write_shard(1, table(w.rows_of(1)))
    assert len(json.loads((tmp_path / 's' / 'manifest.json').read_text())['shards']) == 1
    assert StoreWriter(tmp_path / 's', **spec()).todo() == [2]

def test_refuses_other_config(tmp_path):
    fill(tmp_path / 's')
    with pytest.raises(StoreConfigError, match=r"config.seed: 0 -> 1"): StoreWriter(tmp_path / 's', **spec(config={'seed': 1}))
    with pytest.raises(StoreConfigError, match='rows_per_shard'): StoreWriter(tmp_path / 's', **spec(rows_per_shard=5))
    assert StoreWriter(tmp_path / 's', **spec(config={'seed': 1}), overwrite=True).todo() == [0, 1, 2]
    (tmp_path / 'other').mkdir(); (tmp_path / 'other' / 'notes.txt').write_text('mine')
    with pytest.raises(StoreConfigError, match='holds no activation store'): StoreWriter(tmp_path / 'other', **spec())
    assert (tmp_path / 'other' / 'notes.txt').exists()

def test_full_disk_leaves_store_consistent(tmp_path):
    w = StoreWriter(tmp_path / 's', **spec())
    w.write_shard(0, table(w.rows_of(0)))
    def enospc(t, path):
        Path(path).write_bytes(b'PAR1 partial')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with mock.patch('actlab.store._write_table', enospc):
        with pytest.raises(StoreWriteError, match='disk is full'): w.write_shard(1, table(w.rows_of(1)))
    assert sorted(p.name for p in (tmp_path / 's' / 'data').iterdir()) == [shard_name(0)]
    with pytest.warns(UserWarning): assert len(ActivationStore(tmp_path / 's', allow_incomplete=True)) == 4
    w2 = StoreWriter(tmp_path / 's', **spec())
    for j in w2.todo(): w2.write_shard(j, table(w2.rows_of(j)))
    assert len(ActivationStore(w2.finish())) == 10

def test_unwritable_path(tmp_path):
    f = tmp_path / 'afile'; f.write_text('x')
    with pytest.raises(StoreWriteError, match='cannot write the activation store'): StoreWriter(f / 'store', **spec())
    with pytest.raises(StoreWriteError, match='is a file'): StoreWriter(f, **spec())
    ro = tmp_path / 'ro'; ro.mkdir(); ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.geteuid() == 0:  # root ignores permissions: simulate what a read-only folder does
            with mock.patch('pathlib.Path.mkdir', side_effect=PermissionError(errno.EACCES, 'Permission denied')):
                with pytest.raises(StoreWriteError, match='Permission denied'): StoreWriter(ro / 'store', **spec())
        else:
            with pytest.raises(StoreWriteError, match='Permission denied'): StoreWriter(ro / 'store', **spec())
    finally: ro.chmod(stat.S_IRWXU)

def test_filters_numpy_torch(tmp_path):
    st = fill(tmp_path / 's')
    x = st.numpy('x', where={'corruption_type': 'junk_words'}, flatten=True)
    assert x.shape == (4, 2 * D) and list(x[:, 0]) == [0, 3, 6, 9]
    assert list(st.numpy('x', where={'survives': False})[:, 0, 0]) == [1, 3, 5, 7, 9]
    assert list(st.numpy('x', where=lambda m: m.example_id >= 8)[:, 0, 0]) == [8, 9]
    assert st.numpy('x', where={'example_id': [2, 5]}).shape == (2, 2, D)
    with pytest.raises(KeyError, match='cannot filter'): st.numpy('x', where={'nope': 1})
    with pytest.raises(KeyError, match="did you mean \\['x'\\]"): st.numpy('xx')
    dl = st.dataloader('x', labels=['survives', 'example_id'], where={'survives': True}, batch_size=3, shuffle=False)
    batches = list(dl)
    assert batches[0]['x'].shape == (3, 2, D) and batches[0]['x'].dtype == torch.float32
    assert torch.cat([b['example_id'] for b in batches]).tolist() == [0, 2, 4, 6, 8]

def test_sae_provider_uses_mixing_buffer(tmp_path):
    import sae_lens.training.mixing_buffer as mb
    st = fill(tmp_path / 's')
    calls = []
    real = mb.mixing_buffer
    def spy(*a, **kw): calls.append(a); return real(*a, **kw)
    with mock.patch.object(mb, 'mixing_buffer', spy):
        batches = list(st.sae_provider('x', batch_size=4, buffer_size=8, epochs=1, seed=0))
    assert calls and all(b.shape == (4, D) for b in batches)
    served = torch.cat(batches)[:, 0]
    assert len(served) == 20 and sorted(served.tolist()) == sorted([float(r) for r in range(10)] * 2)
    assert served.tolist() != sorted(served.tolist())  # shuffled
    endless = st.sae_provider('x', batch_size=4, where={'survives': True})
    assert all(next(endless).shape == (4, D) for _ in range(20))  # more than one epoch: never runs dry
    with pytest.raises(StoreError, match='lower batch_size'): next(st.sae_provider('x', batch_size=1000))

def test_sae_provider_flattens_heads(tmp_path):
    "A per-position column [n_heads, d_head] (hook_z at the answer position) is one vector of n_heads*d_head per row."
    w = StoreWriter(tmp_path / 'z', **spec(columns={'x': {'shape': [2, D], 'dtype': 'float32', 'positions': 'answer'}}))
    for j in w.todo(): w.write_shard(j, table(w.rows_of(j)))
    st = ActivationStore(w.finish())
    assert st.d_in('x') == 2 * D
    assert next(st.sae_provider('x', batch_size=5)).shape == (5, 2 * D)

def test_set_labels(tmp_path):
    st = fill(tmp_path / 's')
    st.set_labels(pd.DataFrame({'example_id': [1, 7], 'failure_class': ['erased', 'preserved']}))
    st = ActivationStore(tmp_path / 's')
    fc = st.metadata().set_index('example_id').failure_class
    assert fc[1] == 'erased' and fc[7] == 'preserved'
    assert st.numpy('x', where={'failure_class': 'erased'})[0, 0, 0] == 1
    with pytest.raises(StoreError, match='activation columns'): st.set_labels(pd.DataFrame({'example_id': [1], 'x': [0]}))

def test_combine(tmp_path):
    parts = []
    for i in range(2):
        w = StoreWriter(tmp_path / f'w{i}', **spec(n_rows=5, rows_per_shard=2), worker=(i, 2))
        for j in w.todo():
            w.write_shard(j, table([2 * r + i for r in w.rows_of(j)]))
        parts.append(w.finish())
    st = combine(parts, tmp_path / 'all')
    assert sorted(st.metadata().example_id) == list(range(10)) and st.manifest['worker']['count'] == 2
    with pytest.raises(StoreError, match='workers 0..n-1'): combine([parts[0], parts[0]], tmp_path / 'dup')
    with pytest.raises(StoreConfigError, match='not empty'): combine(parts, tmp_path / 'all')
    w = StoreWriter(tmp_path / 'odd', **spec(n_rows=5, rows_per_shard=2, config={'seed': 9}), worker=(1, 2))
    for j in w.todo(): w.write_shard(j, table([2 * r + 1 for r in w.rows_of(j)]))
    w.finish()
    with pytest.raises(StoreConfigError, match='different config'): combine([parts[0], tmp_path / 'odd'], tmp_path / 'mix')
    inc = StoreWriter(tmp_path / 'inc', **spec(n_rows=5, rows_per_shard=2), worker=(1, 2))
    inc.write_shard(0, table([1, 3]))
    with pytest.raises(StoreError, match='incomplete'): combine([parts[0], tmp_path / 'inc'], tmp_path / 'inc2')


# --- bfloat16 stores (the bits in a 2-byte container, the dtype in the manifest and the Arrow field) and device loaders
from actlab.store import to_bf16_bits, bf16_bits_to_tensor, resolve_pin_memory, StoreDamagedError  # noqa: E402


def bf16_store(path, x, rows_per_shard=4, positions='last_k', ids=None, **kw):
    "A store of `x` `[n, *shape]` written as bfloat16 (bits via `to_bf16_bits`), one row per example (example_id `ids`)."
    n = len(x)
    ids = np.arange(n) if ids is None else np.asarray(ids)
    w = StoreWriter(path, config={'seed': 0}, columns={'x': {'shape': list(x.shape[1:]), 'dtype': 'bfloat16', 'positions': positions}},
                    n_rows=n, rows_per_shard=rows_per_shard, **kw)
    for j in w.todo():
        rows = np.array(w.rows_of(j))
        w.write_shard(j, pa.table({'example_id': ids[rows], 'survives': rows % 2 == 0, 'x': to_arrow(to_bf16_bits(x[rows]))}))
    return ActivationStore(w.finish())


def test_bfloat16_round_trip_is_bit_exact(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 2, D, generator=g) * torch.logspace(-20, 20, 10)[:, None, None]
    st = bf16_store(tmp_path / 'b', x)
    want = x.to(torch.bfloat16)
    assert st.dtype('x') == 'bfloat16' and st.manifest['columns']['x']['dtype'] == 'bfloat16'
    assert torch.equal(st.tensor('x').view(torch.int16), want.view(torch.int16))
    assert st.tensor('x').dtype == torch.bfloat16 and st.tensor('x', dtype=torch.float32).dtype == torch.float32
    assert torch.equal(st.tensor('x', dtype=torch.float32), want.float())
    np.testing.assert_array_equal(st.numpy('x'), want.float().numpy())
    assert not np.array_equal(st.numpy('x'), x.numpy())  # it really rounded
    ds = st.torch_dataset('x', labels=['survives'])
    assert ds[3]['x'].dtype == torch.bfloat16 and torch.equal(ds[3]['x'], want[3])
    vecs = torch.cat(list(st.token_tensors('x')))
    assert torch.equal(vecs, want.reshape(-1, D))
    np.testing.assert_array_equal(np.concatenate(list(st.token_vectors('x'))), want.float().reshape(-1, D).numpy())


def test_every_bfloat16_bit_pattern_survives_the_disk(tmp_path):
    "All 65536 patterns, NaN payloads, infinities, subnormals and -0 included: the container never does arithmetic on them."
    bits = np.arange(2 ** 16, dtype=np.uint16).reshape(-1, 256)
    w = StoreWriter(tmp_path / 'all', config={}, columns={'x': {'shape': [256], 'dtype': 'bfloat16'}}, n_rows=len(bits), rows_per_shard=100)
    for j in w.todo():
        rows = list(w.rows_of(j)); w.write_shard(j, pa.table({'example_id': rows, 'x': to_arrow(bits[rows])}))
    st = ActivationStore(w.finish())
    assert torch.equal(st.tensor('x').view(torch.int16), bf16_bits_to_tensor(bits).view(torch.int16))
    assert st.manifest['columns']['x']['dtype'] == 'bfloat16'


def test_bfloat16_takes_half_the_bytes_on_disk(tmp_path):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 2, D * 16, generator=g)
    w = StoreWriter(tmp_path / 'f', config={'seed': 0}, columns={'x': {'shape': [2, D * 16], 'dtype': 'float32'}}, n_rows=64, rows_per_shard=32)
    for j in w.todo():
        rows = np.array(w.rows_of(j)); w.write_shard(j, pa.table({'example_id': rows, 'x': to_arrow(x[rows].numpy())}))
    f32 = ActivationStore(w.finish())
    b16 = bf16_store(tmp_path / 'b', x, rows_per_shard=32)
    ratio = b16.disk_bytes()['x'] / f32.disk_bytes()['x']
    assert 0.45 < ratio < 0.55, ratio  # 2 bytes a value instead of 4 (random values: snappy saves little on either)
    field = pa.parquet.read_schema(b16.files[0]).field('x')
    assert field.metadata == {b'actlab.dtype': b'bfloat16'}  # a bare pyarrow reader is told what the 16-bit values are


def test_bfloat16_resume_and_combine_keep_the_dtype(tmp_path):
    x = torch.randn(10, 2, D)
    spec_b = dict(config={'seed': 0}, columns={'x': {'shape': [2, D], 'dtype': 'bfloat16'}}, n_rows=10, rows_per_shard=4)
    w = StoreWriter(tmp_path / 'r', **spec_b)
    w.write_shard(0, pa.table({'example_id': np.arange(4), 'x': to_arrow(to_bf16_bits(x[:4]))})); w.release()  # "crash" after shard 0
    w = StoreWriter(tmp_path / 'r', **spec_b)
    assert w.todo() == [1, 2]
    for j in w.todo():
        rows = np.array(w.rows_of(j)); w.write_shard(j, pa.table({'example_id': rows, 'x': to_arrow(to_bf16_bits(x[rows]))}))
    st = ActivationStore(w.finish())
    assert torch.equal(st.tensor('x'), x.to(torch.bfloat16))
    with pytest.raises(StoreConfigError, match="columns.x.dtype: 'bfloat16' -> 'float32'"):  # never mixed into a float32 store
        StoreWriter(tmp_path / 'r', **{**spec_b, 'columns': {'x': {'shape': [2, D], 'dtype': 'float32'}}})
    parts = [bf16_store(tmp_path / f'w{i}', x[i::2], rows_per_shard=3, ids=np.arange(10)[i::2], worker=(i, 2)) for i in range(2)]
    c = combine([p.path for p in parts], tmp_path / 'c')
    assert c.dtype('x') == 'bfloat16'
    got = c.tensor('x')
    want = torch.cat([x[0::2], x[1::2]]).to(torch.bfloat16)
    assert torch.equal(got, want)


def test_bfloat16_bad_input_is_one_clear_error(tmp_path):
    with pytest.raises(StoreError, match="column 'x': dtype must be one of 'float32', 'float16', 'bfloat16'"):
        StoreWriter(tmp_path / 'bad', **spec(columns={'x': {'shape': [2, D], 'dtype': 'bf16'}}))
    assert not (tmp_path / 'bad').exists() or not any((tmp_path / 'bad').iterdir())
    w = StoreWriter(tmp_path / 'f', **spec(columns={'x': {'shape': [2, D], 'dtype': 'bfloat16'}}))
    with pytest.raises(StoreError, match='holds its bits'): w.write_shard(0, table(w.rows_of(0)))  # float32 into a bfloat16 column
    w.release()
    w = StoreWriter(tmp_path / 'g', **spec())
    bits = pa.table({'example_id': [0, 1, 2, 3], 'x': to_arrow(to_bf16_bits(torch.zeros(4, 2, D)))})
    with pytest.raises(StoreError, match='only a bfloat16 column holds uint16'): w.write_shard(0, bits)
    w.release()
    st = bf16_store(tmp_path / 'b', torch.randn(6, 2, D))
    with pytest.raises(StoreError, match='numpy has no bfloat16'): st.numpy('x', dtype='bfloat16')
    with pytest.raises(StoreError, match='bfloat16_bits=True'): st.to_hf(cache_dir=str(tmp_path / 'hf'))
    ds = st.to_hf(cache_dir=str(tmp_path / 'hf'), bfloat16_bits=True)
    raw = np.asarray(ds['x'], np.float16).view(np.uint16).reshape(6, 2, D)
    assert torch.equal(bf16_bits_to_tensor(raw), st.tensor('x'))


def test_a_bfloat16_manifest_over_plain_float16_files_is_damage(tmp_path):
    "A shard whose field lacks the bfloat16 marker (e.g. a float16 file put in its place) is refused, not misread."
    st = bf16_store(tmp_path / 'b', torch.randn(6, 2, D), rows_per_shard=6)
    f = st.files[0]
    t = pa.parquet.read_table(f)
    plain = t.set_column(t.column_names.index('x'), 'x', t['x'])  # same values, the field's metadata dropped
    pa.parquet.write_table(plain, f)
    with pytest.raises(StoreDamagedError, match="column 'x' .* bfloat16 in the manifest"): ActivationStore(tmp_path / 'b')


def test_pin_memory_on_the_cpu(tmp_path):
    st = fill(tmp_path / 's')
    before = [b['x'] for b in st.dataloader('x', batch_size=3, shuffle=False)]
    for kw in (dict(), dict(device='cpu'), dict(device='cpu', pin_memory=None), dict(pin_memory=False)):
        got = [b['x'] for b in st.dataloader('x', batch_size=3, shuffle=False, **kw)]
        assert len(got) == len(before) and all(torch.equal(a, b) for a, b in zip(got, before)), kw
        assert not any(b.is_pinned() for b in got)
    assert resolve_pin_memory(None, 'cpu') is False
    torch.manual_seed(0); a = list(st.sae_provider('x', batch_size=4, epochs=1, device='cpu', pin_memory=None))
    torch.manual_seed(0); b = list(st.sae_provider('x', batch_size=4, epochs=1))
    assert all(torch.equal(p, q) for p, q in zip(a, b)) and len(a) == len(b)
    if not torch.cuda.is_available():
        assert resolve_pin_memory(None, 'cuda') is False
        for call in (lambda: st.dataloader('x', pin_memory=True), lambda: st.tensor('x', pin_memory=True),
                     lambda: next(st.sae_provider('x', batch_size=4, pin_memory=True))):
            with pytest.raises(StoreError, match='pin_memory=True needs CUDA'): call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_pinned_batches_reach_the_gpu(tmp_path):
    st = bf16_store(tmp_path / 'b', torch.randn(10, 2, D))
    b = next(iter(st.dataloader('x', batch_size=5, shuffle=False, device='cuda')))
    assert b['x'].is_cuda and b['x'].dtype == torch.bfloat16 and torch.equal(b['x'].cpu(), st.tensor('x')[:5])
    p = next(st.sae_provider('x', batch_size=4, device='cuda'))
    assert p.is_cuda and p.dtype == torch.float32
