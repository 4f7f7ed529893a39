"""The study at GPT-2 small's shape, offline: a byte-level BPE tokenizer and a random-weight GPT-2 checkpoint built here,
loaded through `load_model(folder)` (the local Hugging Face path). The fast tests run a 2-layer checkpoint of the same
code path; the whole-study test (12 layers, d_model 768, vocabulary 50257, `actlab run configs/gpt2-shape-cpu.yaml`)
takes minutes on 2 cores and runs only with ACTLAB_SLOW=1."""
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from actlab.models import byte_bpe_tokenizer, gpt2_shape_checkpoint, load_model, task_text
from actlab.study import StudyConfig
from actlab.tasks import SUFFIX_FAMILIES, TaskConfig, make_pairs, suffix_pools

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / 'configs' / 'gpt2-shape-cpu.yaml'
slow = pytest.mark.skipif(os.environ.get('ACTLAB_SLOW') != '1', reason='the whole study at GPT-2 small shape: set ACTLAB_SLOW=1')


def _script():
    spec = importlib.util.spec_from_file_location('gpt2_shape', ROOT / 'scripts' / 'gpt2_shape.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope='module')
def tok(tmp_path_factory):
    return byte_bpe_tokenizer(TaskConfig(), tmp_path_factory.mktemp('bpe'))


def test_numbers_and_suffix_words_are_single_tokens_with_a_leading_space(tok):
    cfg = TaskConfig()
    for i in range(cfg.max_number + 1):
        assert len(tok(f' {i}', add_special_tokens=False)['input_ids']) == 1, i
    pools = suffix_pools(tok, list(SUFFIX_FAMILIES))
    assert pools == {f: list(SUFFIX_FAMILIES[f]) for f in SUFFIX_FAMILIES}  # every word of every family survives
    # byte-level like GPT-2: a word the task never uses still encodes (as several byte pieces), never as an unknown token
    ids = tok(' zygomorphic', add_special_tokens=False)['input_ids']
    assert len(ids) > 1 and tok.unk_token_id not in ids and tok.decode(ids) == ' zygomorphic'


def test_gpt2_special_tokens(tok):
    assert tok.bos_token == tok.eos_token == '<|endoftext|>'
    assert tok.bos_token_id == tok.eos_token_id
    assert len(tok) < 50257  # the model's vocabulary pads it


def test_tokenizer_is_trained_on_the_task_text():
    lines = task_text(TaskConfig(operand_max=5))
    assert any(' 10' in ln for ln in lines) and all(isinstance(ln, str) for ln in lines)
    small = byte_bpe_tokenizer(TaskConfig(operand_max=5))
    assert len(small(' 10', add_special_tokens=False)['input_ids']) == 1
    assert len(small(' 87', add_special_tokens=False)['input_ids']) > 1  # in no prompt, answer or suffix pool: not merged


@pytest.fixture(scope='module')
def small_ckpt(tmp_path_factory):
    return gpt2_shape_checkpoint(tmp_path_factory.mktemp('gpt2_small_shape'), seed=0, n_layer=2, n_embd=32, n_head=4)


def test_small_checkpoint_loads_through_the_local_hf_path(small_ckpt):
    files = {p.name for p in small_ckpt.iterdir()}
    assert {'config.json', 'model.safetensors', 'tokenizer.json'} <= files
    assert json.loads((small_ckpt / 'config.json').read_text())['architectures'] == ['GPT2LMHeadModel']
    m = load_model(str(small_ckpt), device='cpu')
    assert (m.cfg.n_layers, m.cfg.d_model, m.cfg.n_heads, m.cfg.d_vocab) == (2, 32, 4, 50257)
    assert m.actlab_identity['path'] == str(small_ckpt.resolve())
    assert m.tokenizer.bos_token == '<|endoftext|>'


def test_make_pairs_and_a_forward_on_the_small_checkpoint(small_ckpt):
    m = load_model(str(small_ckpt), device='cpu')
    cfg = StudyConfig.from_yaml(PRESET).task.replace(n_per_cell=2)
    pairs = make_pairs(cfg, m.tokenizer)
    assert len(pairs) == len(cfg.families) * len(cfg.suffix_lengths) * cfg.n_per_cell
    df = pairs.df
    assert (df.answer_id != df.distractor_id).all() and (df.answer_id != m.tokenizer.unk_token_id).all()
    assert [m.tokenizer.decode([i]) for i in df.answer_id] == df.answer_token.tolist()  # ' 7' is one token, decoded back
    g = pairs.groups()[0]
    logits = m(g.tokens('clean'))
    assert logits.shape == (len(g), g.tokens('clean').shape[1], 50257) and bool(logits.isfinite().all())


def test_seed_changes_the_weights(tmp_path):
    a = gpt2_shape_checkpoint(tmp_path / 'a', seed=0, n_layer=1, n_embd=16, n_head=2)
    b = gpt2_shape_checkpoint(tmp_path / 'b', seed=1, n_layer=1, n_embd=16, n_head=2)
    ma, mb = load_model(str(a), device='cpu'), load_model(str(b), device='cpu')
    assert ma.actlab_identity['weights_hash'] != mb.actlab_identity['weights_hash']


def test_preset_is_the_gpt2_small_preset_on_a_local_folder():
    cfg, ref = StudyConfig.from_yaml(PRESET), StudyConfig.from_yaml(ROOT / 'configs' / 'gpt2-small.yaml')
    assert cfg.task == ref.task.replace(n_per_cell=cfg.task.n_per_cell) and cfg.phases == ref.phases
    assert set(ref.patching.sites) < set(cfg.patching.sites) and cfg.patching.method('head') == 'atp_verify'
    assert cfg.sae.site == ref.sae.site and cfg.probes.site == ref.probes.site
    assert not cfg.sae.pretrained_release  # a random model: its SAE is trained on its own activations
    assert cfg.sae.d_sae >= 768  # sized for d_model 768


def _bound_mb(ckpt: Path, folder: Path, cfg: StudyConfig, base_mb: float) -> float:
    "The peak a phase may reach: the interpreter with its imports, plus copies of the weights, plus the stores, plus patching's budget."
    weights_mb = sum(p.stat().st_size for p in ckpt.glob('*.safetensors')) / 2**20
    store_mb = sum(p.stat().st_size for d in ('store', 'sae_store') for p in (folder / d).rglob('*') if p.is_file()) / 2**20
    # loading holds the Hugging Face model, its converted state dict and the HookedTransformer (3 copies), with one more for
    # TransformerLens's weight processing; patching's activation chunks are budgeted by patching.memory_mb
    return base_mb + 4 * weights_mb + 2 * store_mb + cfg.patching.memory_mb


@slow
def test_whole_study_at_gpt2_small_shape(tmp_path):
    script = _script()
    ckpt = gpt2_shape_checkpoint(tmp_path / 'model', seed=0)
    m = load_model(str(ckpt), device='cpu')
    assert (m.cfg.n_layers, m.cfg.d_model, m.cfg.n_heads, m.cfg.d_vocab) == (12, 768, 12, 50257)
    del m
    base = script.monitored_run([sys.executable, '-c', 'import actlab.study, actlab.cli'], tmp_path / 'none', ['x'])
    res = script.run(ckpt, tmp_path / 'results', PRESET)
    assert res['returncode'] == 0, res['output'][-3000:]
    folder = Path(res['folder'])
    man = json.loads((folder / 'manifest.json').read_text())
    cfg = StudyConfig.from_yaml(folder / 'study.yaml')
    assert man['phases'] == list(cfg.phases) == list(StudyConfig.from_yaml(PRESET).phases)
    assert set(man['seconds']) == set(cfg.phases)
    claims = json.loads((folder / 'claims.json').read_text())['claims']
    assert claims and all('holds' in c for c in claims)
    assert man['model']['path'] == str(ckpt.resolve())
    pex = pd.read_parquet(folder / 'patching_examples.parquet')
    assert len(pex) == man['n_pairs'] == len(cfg.task.families) * len(cfg.task.suffix_lengths) * cfg.task.n_per_cell
    bound = _bound_mb(ckpt, folder, cfg, max(base['peak_rss_mb'].values()))
    sampled = {k: v for k, v in res['peak_rss_mb'].items() if k in (script.SETUP, *cfg.phases)}
    assert set(sampled) == {script.SETUP, *cfg.phases}, sampled  # loading, and every phase, sampled at least once
    assert all(np.isfinite(v) and 0 < v < bound for v in sampled.values()), (sampled, bound)
    recorded = man.get('peak_rss_mb')  # the study's own per-phase record, where this version writes one
    if recorded is not None:
        assert set(recorded) >= set(cfg.phases) and all(0 < recorded[p] < bound for p in cfg.phases), (recorded, bound)
