"""Contributor hygiene: the JupyterLab pre-save hook (scripts/jupyter_hooks.py) saves notebooks in nbs/ without outputs,
so a notebook saved from JupyterLab passes scripts/test.sh's clean check."""
import importlib.util, json, subprocess, sys
from pathlib import Path
import nbformat

ROOT = Path(__file__).resolve().parent.parent

def _hooks():
    spec = importlib.util.spec_from_file_location('jupyter_hooks', ROOT / 'scripts' / 'jupyter_hooks.py')
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); return m

def _model():
    nb = nbformat.v4.new_notebook()
    c = nbformat.v4.new_code_cell('1 + 1', execution_count=3)
    c.outputs = [nbformat.v4.new_output('execute_result', {'text/plain': '2'}, execution_count=3)]
    nb.cells = [c]; nb.metadata['widgets'] = {'state': {}}
    return {'type': 'notebook', 'content': nb}

def test_hook_clears_notebooks_in_nbs_only(tmp_path):
    h = _hooks()
    class CM: root_dir = str(ROOT)
    m = _model(); h.actlab_pre_save(model=m, path='nbs/99_scratch.ipynb', contents_manager=CM())
    c = m['content'].cells[0]
    assert c.outputs == [] and c.execution_count is None and 'widgets' not in m['content'].metadata
    other = _model(); h.actlab_pre_save(model=other, path='elsewhere/x.ipynb', contents_manager=CM())
    assert other['content'].cells[0].outputs  # not ours: untouched

def test_cleaned_notebook_passes_nbdev_clean(tmp_path):
    "what the hook leaves is what nbdev_clean leaves (the test suite's clean check)"
    h = _hooks()
    class CM: root_dir = str(ROOT)
    m = _model(); h.actlab_pre_save(model=m, path='nbs/99_scratch.ipynb', contents_manager=CM())
    p = tmp_path / 'x.ipynb'; nbformat.write(m['content'], p)
    before = json.loads(p.read_text())
    subprocess.run([str(Path(sys.executable).parent / 'nbdev_clean'), '--fname', str(p)], check=True, cwd=ROOT)
    assert json.loads(p.read_text()) == before

def test_install_writes_the_server_config(tmp_path):
    p = _hooks().install(tmp_path)
    assert 'actlab_pre_save' in p.read_text() and p.name == 'jupyter_server_config.py'
