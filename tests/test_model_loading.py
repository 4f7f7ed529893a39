"""A damaged or incomplete model folder is one clear line, never a hub wait or a traceback (issue 16's model cases)."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from actlab.models import BuiltinModelConfig, ModelLoadError, build_corpus, load_model, save_model, train_builtin_model
from actlab.tasks import build_word_tokenizer


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    cfg = BuiltinModelConfig(d_model=16, n_heads=2, d_mlp=32, n_layers=2, n_train_seqs=16, n_test_seqs=4, lr_phases=(1e-3,),
                             epochs_per_phase=1, batch_size=8)
    tok = build_word_tokenizer(cfg.task_config())
    model, _ = train_builtin_model(cfg, tok, build_corpus(cfg, tok), progress=False, device='cpu')
    folder = tmp_path_factory.mktemp('m') / 'model'
    save_model(model, folder, cfg)
    return folder


def _copy(saved, tmp_path):
    d = tmp_path / 'copy'; shutil.copytree(saved, d); return d


def test_a_saved_folder_loads(saved):
    assert load_model(str(saved), device='cpu').cfg.n_layers == 2


def test_missing_tokenizer_relative_path_fails_fast_without_the_hub(saved, tmp_path, monkeypatch):
    d = _copy(saved, tmp_path); shutil.rmtree(d / 'tokenizer')
    monkeypatch.chdir(tmp_path)
    t0 = time.time()
    with pytest.raises(ModelLoadError, match='tokenizer/'):
        load_model('copy', device='cpu')
    assert time.time() - t0 < 10


@pytest.mark.parametrize('damage', ['truncate', 'empty'])
def test_damaged_weights_are_one_line(saved, tmp_path, damage):
    d = _copy(saved, tmp_path); f = d / 'model.safetensors'
    f.write_bytes(f.read_bytes()[:100] if damage == 'truncate' else b'')
    with pytest.raises(ModelLoadError, match='missing or damaged'):
        load_model(str(d), device='cpu')


def test_edited_config_is_refused(saved, tmp_path):
    d = _copy(saved, tmp_path); meta = json.loads((d / 'config.json').read_text())
    meta['hooked_config']['d_mlp'] = 48; (d / 'config.json').write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match='config was edited'):
        load_model(str(d), device='cpu')
    (d / 'config.json').write_text('{not json')
    with pytest.raises(ModelLoadError, match='damaged'):
        load_model(str(d), device='cpu')


def test_hf_config_without_weights_and_pickled_weights(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    tok = build_word_tokenizer()
    hf = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, vocab_size=len(tok)))
    hf.config.save_pretrained(tmp_path / 'cfg_only'); tok.save_pretrained(tmp_path / 'cfg_only')
    with pytest.raises(ModelLoadError, match='no \\*.safetensors'):
        load_model(str(tmp_path / 'cfg_only'), device='cpu')
    hf.save_pretrained(tmp_path / 'bin', safe_serialization=False); tok.save_pretrained(tmp_path / 'bin')
    with pytest.raises(ModelLoadError, match='pickled .bin weights are not loaded'):
        load_model(str(tmp_path / 'bin'), device='cpu')


def test_cli_train_model_bad_recipe_exits_2():
    r = subprocess.run([sys.executable, '-m', 'actlab.cli', 'train-model', '--recipe', 'huge'], capture_output=True, text=True,
                       env={**os.environ, 'ACTLAB_NO_TRAIN': '1'})
    assert r.returncode == 2 and 'choose from' in r.stderr and 'Traceback' not in r.stderr
