"""Hub presets in configs/: validated without downloading anything (config parses, hook names exist in the architecture,
pretrained SAE listed in SAELens's directory, task tokens single-token when the tokenizer is cached locally)."""
import subprocess, sys, tempfile
from pathlib import Path

import pytest
import torch

from actlab.study import StudyConfig
from actlab.extract import Site

CONFIGS = Path(__file__).parent.parent / 'configs'


@pytest.mark.parametrize('path', sorted(CONFIGS.glob('*.yaml')), ids=lambda p: p.name)
def test_every_config_parses(path):
    cfg = StudyConfig.from_yaml(path)
    assert StudyConfig.from_yaml(cfg.to_yaml()) == cfg


def test_default_yaml_is_actlab_config_output():
    r = subprocess.run([sys.executable, '-m', 'actlab.cli', 'config'], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == (CONFIGS / 'default.yaml').read_text()


def _gpt2_small_meta_model():
    "gpt2-small's HookedTransformer with no weights (meta device), its config from TransformerLens's own HF->TL table."
    from transformers import GPT2Config
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config
    with tempfile.TemporaryDirectory() as d:
        # GPT2Config()'s defaults are gpt2-small's (768 wide, 12 layers, 12 heads, 50257 tokens); n_ctx=1024 is the one
        # field the hub's config.json has that the class no longer sets
        hf = GPT2Config(n_ctx=1024); hf.architectures = ['GPT2LMHeadModel']; hf.save_pretrained(d)
        cd = convert_hf_model_config(d)
    cd.pop('tokenizer_name', None)
    return HookedTransformer(HookedTransformerConfig(**cd, device='meta'))


@pytest.fixture(scope='module')
def gpt2():
    return _gpt2_small_meta_model()


@pytest.fixture(scope='module')
def preset():
    return StudyConfig.from_yaml(CONFIGS / 'gpt2-small.yaml')


def test_gpt2_preset_names_a_known_model(preset, gpt2):
    from transformer_lens.loading_from_pretrained import get_official_model_name
    assert get_official_model_name(preset.model.name) == 'gpt2'
    assert (gpt2.cfg.n_layers, gpt2.cfg.d_model, gpt2.cfg.n_heads, gpt2.cfg.d_vocab) == (12, 768, 12, 50257)


def test_gpt2_preset_hook_names_exist(preset, gpt2):
    from actlab.patching import SITES
    hooks = [preset.sae.site, preset.probes.site, *preset.extraction.hooks]
    for h in hooks:
        assert Site.parse(h).hook in gpt2.hook_dict, f'{h} is not a hook of gpt2-small'
    assert all(s in SITES for s in preset.patching.sites)


def test_gpt2_preset_pretrained_sae_is_listed(preset):
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    rel = get_pretrained_saes_directory()[preset.sae.pretrained_release]
    assert rel.model == 'gpt2-small'
    assert preset.sae.pretrained_id in rel.saes_map
    assert preset.sae.site == preset.sae.pretrained_id == 'blocks.8.hook_resid_pre'


def test_gpt2_task_tokens_are_single_tokens(preset):
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained('gpt2', local_files_only=True)
    except Exception as e:  # no hub here, and no cached copy: nothing to check against
        pytest.skip(f"GPT-2's tokenizer is not in the local Hugging Face cache ({type(e).__name__})")
    from actlab.tasks import make_pairs
    pairs = make_pairs(preset.task, tok)  # raises naming the offending token when an answer or suffix is not single-token
    assert len(pairs) == len(preset.task.families) * len(preset.task.suffix_lengths) * preset.task.n_per_cell


def test_gpt2_preset_fails_fast_offline(preset):
    "Without a hub, the preset's run stops at the model with a one-line message (no traceback)."
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([sys.executable, '-m', 'actlab.cli', 'run', str(CONFIGS / 'gpt2-small.yaml'), '--out', d],
                           capture_output=True, text=True, timeout=120)
    if r.returncode == 0: pytest.skip('a hub is reachable here: the preset ran')
    assert r.returncode == 2 and 'Traceback' not in r.stderr and 'builtin' in r.stderr


def test_gpt2_shape_preset_hook_names_exist_at_gpt2_small_shape(gpt2):
    "configs/gpt2-shape-cpu.yaml (the gpt2-small study on a random local GPT-2): its sites exist in gpt2-small's architecture."
    from actlab.patching import SITES
    shape = StudyConfig.from_yaml(CONFIGS / 'gpt2-shape-cpu.yaml')
    for h in [shape.sae.site, shape.probes.site, *shape.extraction.hooks]:
        assert Site.parse(h).hook in gpt2.hook_dict, f'{h} is not a hook of gpt2-small'
    assert all(s in SITES for s in shape.patching.sites) and shape.patching.method('head') == 'atp_verify'
    assert shape.sae.d_sae % gpt2.cfg.d_model == 0  # a whole multiple of d_model 768


def test_gpt2_shape_preset_without_its_checkpoint_is_one_line():
    "Before `scripts/gpt2_shape.py make`, the preset's run stops at the model with one line naming what to give."
    with tempfile.TemporaryDirectory() as d:
        cfg = StudyConfig.from_yaml(CONFIGS / 'gpt2-shape-cpu.yaml')
        cfg = cfg.replace(model=cfg.model.replace(name=str(Path(d) / 'no-checkpoint-here')))
        cfg.to_yaml(Path(d) / 'c.yaml')
        r = subprocess.run([sys.executable, '-m', 'actlab.cli', 'run', str(Path(d) / 'c.yaml'), '--out', d],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and 'Traceback' not in r.stderr and 'folder' in r.stderr, r.stderr
