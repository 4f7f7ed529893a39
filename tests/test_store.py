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
