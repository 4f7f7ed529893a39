"""Keep the notebooks in nbs/ clean when they are saved from JupyterLab (or Jupyter Notebook).

The notebooks are the source of truth and are committed without outputs (a run of 10_dashboards alone writes ~9 MB),
and `scripts/test.sh` fails when `nbdev_clean` would change one. This pre-save hook cleans a notebook under this
repository's nbs/ the way `nbdev_clean --clear_all` does (outputs, execution counts and cell metadata removed) as it is
written to disk; the notebook open in the browser keeps its outputs. Other notebooks are saved untouched.

    python scripts/jupyter_hooks.py --install   # once (scripts/setup.sh does it): writes .venv/etc/jupyter/jupyter_server_config.py
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'

def actlab_pre_save(model=None, path=None, contents_manager=None, **kw):
    "Jupyter `ContentsManager.pre_save_hook`: clear outputs of a notebook in nbs/ before it is written."
    if not model or model.get('type') != 'notebook' or model.get('content') is None: return
    root = getattr(contents_manager, 'root_dir', None)
    full = (Path(root) / path if root and path else Path(path or '')).resolve()
    if full.parent != NBS.resolve() or full.suffix != '.ipynb': return
    from nbdev.clean import clean_nb
    nb = model['content']
    clean_nb(nb, clear_all=True, clean_ids=True)
    nb.get('metadata', {}).pop('widgets', None)  # saved widget state: megabytes, and stale without the outputs

CONFIG = '''# written by scripts/jupyter_hooks.py --install: notebooks in {nbs} are saved without outputs
import sys
sys.path.insert(0, {scripts!r})
from jupyter_hooks import actlab_pre_save
c.FileContentsManager.pre_save_hook = actlab_pre_save
'''

def install(prefix: Path = Path(sys.prefix)) -> Path:
    "Write the Jupyter server config that registers the hook into `prefix/etc/jupyter` (the virtual environment's)."
    p = prefix / 'etc' / 'jupyter' / 'jupyter_server_config.py'
    p.parent.mkdir(parents=True, exist_ok=True)
    text = CONFIG.format(nbs=NBS, scripts=str(ROOT / 'scripts'))
    if p.exists() and 'jupyter_hooks.py --install' not in p.read_text():
        raise SystemExit(f'{p} exists and is not ours; add these lines to it yourself:\n{text}')
    p.write_text(text)
    return p

if __name__ == '__main__':
    if '--install' in sys.argv: print(f'JupyterLab pre-save hook installed: {install()}')
    else: print(__doc__)
