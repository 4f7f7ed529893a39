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


def test_train_model_loads_the_cached_model(tmp_path):
    r = actlab('train-model', '--out', tmp_path)
    assert r.returncode == 0, r.stderr
    assert 'weights_hash' in json.loads((tmp_path / 'model' / 'manifest.json').read_text())['model']
