"""actlab.engine on a local Ray cluster (2 CPUs): Ray results equal one-process ones, and a worker killed mid-shard is retried
without losing or duplicating a shard."""
import os, signal, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

ray = pytest.importorskip('ray', reason="Ray is the optional extra actlab[ray] (scripts/setup.sh installs it)")

from actlab.engine import EngineConfig, extract, patch, patch_pairs, parts_folder
from actlab.extract import ExtractConfig, extract as local_extract
from actlab.patching import PatchingConfig, per_example_patch, patch_pairs as local_patch_pairs
from actlab.attribution import attribution_patch
from actlab.tasks import TaskConfig, make_pairs, build_word_tokenizer


def build_model():
    "The same small random model in every process (seeded)."
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    tok = build_word_tokenizer()
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=32, d_vocab=len(tok),
                                  act_fn='gelu', normalization_type='LN', seed=0)
    return HookedTransformer(cfg, tokenizer=tok).eval()


class KillingLoader:
    "Loads `build_model()` with a hook that counts forwards into a log file per task; the first task to reach forward `at` SIGKILLs its own worker."
    def __init__(self, folder: Path, at: int):
        self.folder, self.at = Path(folder), at

    def __call__(self):
        import uuid
        model = build_model()
        log = self.folder / f'run-{uuid.uuid4().hex}'
        log.write_text('0')
        calls = [0]
        def hook(act, hook):
            calls[0] += 1
            log.write_text(str(calls[0]))
            if calls[0] == self.at:
                try: fd = os.open(self.folder / 'killed', os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # only once in all
                except FileExistsError: return
                os.write(fd, log.name.encode()); os.close(fd)
                os.kill(os.getpid(), signal.SIGKILL)  # the worker dies mid-shard
        model.add_hook('blocks.0.hook_resid_pre', hook, is_permanent=True)
        return model

    def runs(self) -> tuple[list[int], int | None]:
        "Forwards per task run, and the index of the killed one."
        runs = sorted(self.folder.glob('run-*'), key=lambda p: p.stat().st_mtime)
        killed = (self.folder / 'killed').read_text() if (self.folder / 'killed').exists() else None
        return [int(p.read_text()) for p in runs], next((i for i, p in enumerate(runs) if p.name == killed), None)


@pytest.fixture(scope='module')
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test file
    yield
    ray.shutdown()


@pytest.fixture(scope='module')
def mp():
    model = build_model()
    return model, make_pairs(TaskConfig(n_per_cell=3, suffix_lengths=(1, 2)), model.tokenizer)


def by_id(store):
    m = store.metadata()
    o = np.argsort(m.example_id.to_numpy())
    return m.iloc[o].reset_index(drop=True), {c: store.numpy(c)[o] for c in store.activation_columns}


def _close(m0, m1, a0, a1):
    "Same rows, same labels and activations up to float32 rounding (thread counts differ between this process and a Ray task)."
    pd.testing.assert_frame_equal(m0, m1, rtol=1e-5, atol=1e-5)
    assert set(a0) == set(a1)
    for c in a0: np.testing.assert_allclose(a0[c], a1[c], rtol=1e-5, atol=1e-5, err_msg=c)


RAY = EngineConfig(engine='ray', num_shards=3)
HOOKS = ('blocks.1.hook_resid_pre', 'blocks.0.attn.hook_z:1')


def test_ray_store_equals_one_process(cluster, mp, tmp_path):
    model, pairs = mp
    for bs in (1, 256):
        xc = ExtractConfig(hooks=HOOKS, rows_per_shard=5, batch_size=bs, also_clean=True, progress=False)
        m0, a0 = by_id(local_extract(model, pairs, tmp_path / f'one{bs}', xc))
        st = extract(model, pairs, tmp_path / f'ray{bs}', xc, RAY)
        m1, a1 = by_id(st)
        assert st.manifest['worker']['count'] == 3 and not parts_folder(tmp_path / f'ray{bs}').exists()
        # a worker's batches hold other rows, and a Ray task runs torch on its own num_cpus threads (this process on
        # whatever OMP_NUM_THREADS says): float32 may differ in the last bits, never more
        _close(m0, m1, a0, a1)


def test_ray_patching_equals_one_process(cluster, mp):
    model, pairs = mp
    g = pairs.groups()[0]
    args = g.tokens('clean'), g.tokens('corrupted'), torch.as_tensor(g.answer_ids), torch.as_tensor(g.distractor_ids)
    for fn, site in ((per_example_patch, 'resid_pre'), (per_example_patch, 'head'), (attribution_patch, 'attn_out')):
        ref = fn(model, *args, site=site)
        assert torch.equal(patch(fn, model, *args, engine=RAY, site=site), ref), (fn.__name__, site)
    pc = PatchingConfig(sites=('resid_pre', 'head'))
    pd.testing.assert_frame_equal(patch_pairs(model, pairs, pc, RAY).df, local_patch_pairs(model, pairs, pc).df)
    # the task may load the model itself (a loader here; a model name on a cluster)
    ref = per_example_patch(model, *args, site='mlp_out')
    assert torch.equal(patch(per_example_patch, model, *args, engine=RAY, spec=build_model, site='mlp_out'), ref)


def test_killed_worker_is_retried_without_losing_or_duplicating_a_shard(cluster, mp, tmp_path):
    model, pairs = mp
    xc = ExtractConfig(hooks=HOOKS, rows_per_shard=3, batch_size=1, progress=False)
    ref_meta, ref_acts = by_id(local_extract(model, pairs, tmp_path / 'one', xc))
    logs = tmp_path / 'logs'; logs.mkdir()
    n = len(pairs)  # forwards hooked at layer 0: one probe, then two per example (corrupted, and clean for the labels) at batch_size=1
    loader = KillingLoader(logs, at=n + 1)  # about half way: inside a shard, with earlier shards on disk
    st = extract(model, pairs, tmp_path / 'ray', xc, EngineConfig(engine='ray', num_shards=1, max_retries=2), spec=loader)
    runs, killed = loader.runs()
    assert len(runs) == 2 and killed == 0, (runs, killed)  # killed once, retried once
    assert runs[0] == n + 1 and 1 < runs[1] < 1 + 2 * n  # the retry resumed: it ran only the shards the first attempt had not written
    meta, acts = by_id(st)
    assert meta.example_id.is_unique and len(meta) == n  # nothing lost, nothing twice
    _close(ref_meta, meta, ref_acts, acts)
    assert len(st.files) == -(-n // 3) and st.verify()
    assert not parts_folder(tmp_path / 'ray').exists()


def test_killed_patching_task_is_retried(cluster, mp, tmp_path):
    model, pairs = mp
    g = pairs.groups()[0]
    args = g.tokens('clean'), g.tokens('corrupted'), torch.as_tensor(g.answer_ids), torch.as_tensor(g.distractor_ids)
    ref = per_example_patch(model, *args, site='resid_pre')
    loader = KillingLoader(tmp_path, at=2)
    got = patch(per_example_patch, model, *args, engine=EngineConfig(engine='ray', num_shards=2), spec=loader, site='resid_pre')
    assert torch.equal(got, ref)
    runs, killed = loader.runs()
    assert len(runs) == 3 and killed is not None  # two shards, one killed and run again


def test_worker_that_keeps_dying_is_a_clear_error(cluster, mp, tmp_path):
    model, pairs = mp
    g = pairs.groups()[0]
    args = g.tokens('clean'), g.tokens('corrupted'), torch.as_tensor(g.answer_ids), torch.as_tensor(g.distractor_ids)
    with pytest.raises(RuntimeError, match='max_retries=0'):
        patch(per_example_patch, model, *args, engine=EngineConfig(engine='ray', num_shards=1, max_retries=0),
              spec=KillingLoader(tmp_path, at=1), site='resid_pre')


def test_study_on_ray_from_the_cli_equals_the_local_study(cluster, tmp_path, capsys):
    from actlab.cli import main
    from actlab.study import StudyConfig, run_study
    from actlab.store import ActivationStore
    cfg = StudyConfig(name='t', task=TaskConfig(n_per_cell=2, suffix_lengths=(1, 4)), patching=PatchingConfig(sites=('resid_pre',)),
                      phases=('baseline', 'patching', 'extraction'))
    cfg.extraction.n_top_sites = 1
    cfg.to_yaml(tmp_path / 'study.yaml')
    local = run_study(cfg, tmp_path / 'local', progress=False)
    assert main(['extract', str(tmp_path / 'study.yaml'), '--out', str(tmp_path / 'ray'), '--no-progress',
                 '--engine', 'ray', '--num-shards', '2']) == 0
    ray_dir = tmp_path / 'ray' / 't'
    a, b = (pd.read_parquet(f / 'patching_examples.parquet') for f in (local, ray_dir))
    pd.testing.assert_frame_equal(a, b, rtol=1e-5, atol=1e-5)
    (m0, a0), (m1, a1) = (by_id(ActivationStore(f / 'store')) for f in (local, ray_dir))
    assert ActivationStore(ray_dir / 'store').manifest['worker']['count'] == 2
    pd.testing.assert_frame_equal(m0, m1, rtol=1e-5, atol=1e-5)
    for c in a0: np.testing.assert_allclose(a0[c], a1[c], rtol=1e-5, atol=1e-5, err_msg=c)


def test_bad_engine_arguments_are_one_line(tmp_path, capsys):
    from actlab.cli import main
    assert main(['extract', '--out', str(tmp_path), '--num-shards', '0']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'num_shards must be >= 1' in err[0]
    assert not any(tmp_path.iterdir())  # refused before any work
