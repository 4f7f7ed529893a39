"""The `actlab` console script as a user runs it: --help everywhere, one-line errors with exit status 2, results folders
with a manifest."""
import json, os, subprocess, sys
from pathlib import Path

import pytest

from actlab.study import StudyConfig
from actlab.tasks import TaskConfig
from actlab.patching import PatchingConfig
from actlab.cli import build_parser

ENV = {**os.environ, 'ACTLAB_NO_TRAIN': '1', 'OMP_NUM_THREADS': '1'}
COMMANDS = ['run', 'patch', 'extract', 'probe', 'sae', 'pairs', 'train-model', 'dashboard', 'config']


def actlab(*args, cwd=None):
    return subprocess.run([sys.executable, '-m', 'actlab.cli', *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd)


def test_every_command_has_help():
    sub = next(a for a in build_parser()._actions if a.dest == 'command')
    assert set(COMMANDS) <= set(sub.choices)
    for c in COMMANDS:
        with pytest.raises(SystemExit) as e: build_parser().parse_args([c, '--help'])
        assert e.value.code == 0


def test_help_runs_as_a_console_script():
    r = actlab('--help')
    assert r.returncode == 0 and all(c in r.stdout for c in COMMANDS)


@pytest.mark.parametrize('args, says', [
    (['run', '/no/such.yaml'], 'actlab config > study.yaml'),
    (['dashboard', '/no/such/folder'], 'actlab run'),
])
def test_errors_are_one_line_with_the_fix(args, says):
    r = actlab(*args)
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and says in r.stderr


def test_bad_value_names_the_field(tmp_path):
    bad = tmp_path / 'bad.yaml'; bad.write_text('sae:\n  k: 0\n')
    r = actlab('sae', bad, '--out', tmp_path)
    assert r.returncode == 2 and 'k must be in' in r.stderr and 'Traceback' not in r.stderr


def test_probe_command_writes_results_with_manifest(tmp_path):
    cfg = StudyConfig(name='t', task=TaskConfig(n_per_cell=6, suffix_lengths=(1, 4)), patching=PatchingConfig(sites=('resid_pre',)))
    cfg.extraction.n_top_sites = 1
    cfg.to_yaml(tmp_path / 'study.yaml')
    r = actlab('probe', tmp_path / 'study.yaml', '--out', tmp_path / 'results', '--no-progress')
    assert r.returncode == 0, r.stderr
    folder = tmp_path / 'results' / 't'
    m = json.loads((folder / 'manifest.json').read_text())
    assert m['phases'] == ['baseline', 'patching', 'extraction', 'probes']
    assert sum(m['probes']['failure_classes'].values()) == m['n_pairs']
    assert (folder / 'report.html').exists() and (folder / 'plotly.min.js').exists() and (folder / 'store' / 'manifest.json').exists()
    claims = json.loads((folder / 'claims.json').read_text())['claims']
    assert {'clean_accuracy', 'ood_drop_grows_with_length'} <= {c['name'] for c in claims}
    page = (folder / 'report.html').read_text()
    box = page[page.index('id="findings"'):page.index('</section>')]
    assert all(c['name'] in box for c in claims) and f"min_accuracy</b> {claims[0]['evidence']['min_accuracy']:.3g}" in box
    assert page.index('id="findings"') < page.index('<h2>A.')  # the findings come first
    assert 'Tried to stack head results' not in r.stdout + r.stderr  # no TransformerLens notices


def test_config_is_commented_yaml():
    r = actlab('config')
    assert r.returncode == 0
    assert StudyConfig.from_yaml(r.stdout) == StudyConfig()
    lines = r.stdout.splitlines()
    fields = [i for i, l in enumerate(lines) if l.strip() and not l.strip().startswith(('#', '-'))]
    assert fields and all(lines[i - 1].strip().startswith('#') for i in fields)
    site = lines.index('  site: \'\'')
    assert "''" in lines[site - 1]  # says what '' selects
    plain = actlab('config', '--plain').stdout
    assert '#' not in plain and StudyConfig.from_yaml(plain) == StudyConfig()


def test_dashboard_command_loads_what_run_saved(tmp_path):
    from actlab.study import SAEPhase, ExtractionPhase
    cfg = StudyConfig(name='d', task=TaskConfig(n_per_cell=6, suffix_lengths=(1, 4)), patching=PatchingConfig(sites=('resid_pre', 'head')),
                      extraction=ExtractionPhase(n_top_sites=1, progress=False), sae=SAEPhase(steps=20, d_sae=64, batch_size=64, norm_rows=64))
    cfg.to_yaml(tmp_path / 'study.yaml')
    r = actlab('run', tmp_path / 'study.yaml', '--out', tmp_path / 'results', '--no-progress')
    assert r.returncode == 0, r.stderr
    folder = tmp_path / 'results' / 'd'
    assert json.loads((folder / 'manifest.json').read_text())['dashboard_data'] == 'dashboard_data.npz'
    r = actlab('dashboard', folder, '--out', tmp_path / 'site')
    assert r.returncode == 0, r.stderr
    assert 'computing it' not in r.stderr  # loaded, not recomputed
    assert (tmp_path / 'site' / 'index.html').exists() and (tmp_path / 'site' / 'examples.html').exists()
    assert not (folder / 'dashboards').exists()


def test_train_model_loads_the_cached_model(tmp_path):
    r = actlab('train-model', '--out', tmp_path)
    assert r.returncode == 0, r.stderr
    assert 'weights_hash' in json.loads((tmp_path / 'model' / 'manifest.json').read_text())['model']


def test_the_whole_study_runs_on_a_bfloat16_model(tmp_path):
    "model.dtype='bfloat16': every phase runs, and its baseline is the float32 model's up to bfloat16 rounding."
    import json
    import pandas as pd
    from scipy.stats import spearmanr
    from actlab.study import StudyConfig, ModelConfig, ExtractionPhase, SAEPhase, run_study
    from actlab.tasks import TaskConfig
    from actlab.patching import PatchingConfig
    from actlab.baseline import evaluate_pairs
    from actlab.models import load_model
    from actlab.tasks import make_pairs
    cfg = StudyConfig(name='bf16', task=TaskConfig(n_per_cell=6, suffix_lengths=(1, 4)), model=ModelConfig(device='cpu', dtype='bfloat16'),
                      patching=PatchingConfig(sites=('resid_pre',)), extraction=ExtractionPhase(n_top_sites=1, progress=False),
                      sae=SAEPhase(steps=10, d_sae=32, batch_size=32, norm_rows=64))
    folder = run_study(cfg, tmp_path, progress=False)
    m = json.loads((folder / 'manifest.json').read_text())
    assert m['phases'] == list(cfg.phases) and m['study']['model']['dtype'] == 'bfloat16'
    claims = json.loads((folder / 'claims.json').read_text())['claims']
    assert claims and all(isinstance(c['holds'], bool) for c in claims)
    bf = pd.read_parquet(folder / 'baseline_scores.parquet')
    model = load_model('builtin', device='cpu')
    f32 = evaluate_pairs(model, make_pairs(cfg.task, model.tokenizer))
    col = next(c for c in ('margin_corrupted', 'margin', 'logit_diff_corrupted', 'logit_diff') if c in bf)
    assert len(bf) == len(f32) and spearmanr(bf[col], f32[col]).statistic > 0.9, col
