"""Build the docs site from the notebooks, offline, without Quarto.

`nbdev_docs` needs Quarto, which cannot be installed on machines without network access (the `quarto-cli`
PyPI package downloads its binary). This script builds the same pages with mkdocs-material + mkdocs-jupyter:

1. execute each notebook in `nbs/` (committed notebooks carry no outputs) with nbclient, in `nbs/` as nbdev_test
   does, with ACTLAB_NO_TRAIN=1; cells flagged with settings.ini's `tst_flags` (e.g. `#| slow`) or `#| eval: false`
   are shown but not run; widget state is saved into the notebook metadata;
2. run nbdev 2's own processing on the executed notebook (`nbdev.processors.FilterDefaults`, as `proc_nbs` does for
   Quarto: directives, `show_doc`, hidden/exported cells, frontmatter) and write it to `_proc/`;
3. `mkdocs build` (mkdocs.yml at the repo root; the hook `docs_src/hooks.py` makes every page work with no network:
   a local plotly.js, the widget renderer `@jupyter-widgets/html-manager` and d3 from `docs_src/node_modules`, no CDN).

Executed notebooks are cached in `.cache/actlab-docs/` keyed on the notebook and the package source, so a rebuild
only re-runs what changed. New notebooks (`nbs/NN_name.ipynb`) are picked up automatically, in file-name order.

    python scripts/build_docs.py                 # full site into site/
    python scripts/build_docs.py --only index 10_dashboards   # a subset (fast; used by tests)
    python scripts/build_docs.py --no-exec       # no execution (pages without outputs)
"""
import argparse, functools, hashlib, json, os, re, shutil, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS, PROC, SITE = ROOT / 'nbs', ROOT / '_proc', ROOT / 'site'
CACHE = ROOT / '.cache' / 'actlab-docs'
ASSETS = ROOT / 'docs_src'
WIDGET_JS = ASSETS / 'node_modules' / '@jupyter-widgets' / 'html-manager' / 'dist'

# Run first in every kernel: plotly figures become a <div> + a Plotly.newPlot script with NO plotly.js inline and
# no CDN reference (the hook puts a <script> for the local plotly.min.js once at the top of each page that has one).
# The plotly mimetype is kept too, so the same notebook still renders interactively in JupyterLab.
_KERNEL_SETUP = '''
import plotly.io as _pio
from plotly.io._base_renderers import MimetypeRenderer as _MR
class _ActlabDocsRenderer(_MR):
    def to_mimebundle(self, fig_dict):
        return {"text/html": _pio.to_html(fig_dict, include_plotlyjs=False, full_html=False, validate=False)}
_pio.renderers["actlab_docs"] = _ActlabDocsRenderer()
_pio.renderers.default = "actlab_docs"
del _MR
import pandas as _pd, numpy as _np
_pd.set_option('display.precision', 4)  # floats in printed tables: rounded
_np.set_printoptions(precision=4, suppress=True)
'''

_re_dir = re.compile(r'^\s*#\|\s*(.*?)\s*$')

def directives(src: str) -> dict:
    "nbdev/Quarto `#|` directives at the top of a cell -> {name: value}"
    out = {}
    for line in src.splitlines():
        m = _re_dir.match(line)
        if not m:
            if line.strip(): break
            continue
        k, _, v = m.group(1).partition(':') if ':' in m.group(1) else (m.group(1).split()[0] if m.group(1) else '', '', '')
        out[k.strip().lower()] = v.strip().lower()
    return out

def tst_flags() -> set:
    import configparser
    cp = configparser.ConfigParser(); cp.read(ROOT / 'settings.ini')
    return set(cp['DEFAULT'].get('tst_flags', '').split())

def notebooks(only=None, extra=()) -> list:
    "The notebooks in nbs/ in file-name order (index first), optionally only the names given, plus `extra` paths"
    nbs = sorted(p for p in NBS.glob('*.ipynb') if not p.name.startswith(('_', '.')))
    nbs.sort(key=lambda p: (p.stem != 'index', p.name))
    if only:
        want = {o.removesuffix('.ipynb') for o in only}
        missing = want - {p.stem for p in nbs}
        if missing: sys.exit(f'no notebook named {sorted(missing)} in nbs/ (have: {[p.stem for p in nbs]})')
        nbs = [p for p in nbs if p.stem in want]
    return nbs + [Path(e).resolve() for e in extra]

def _src_hash(nb_path: Path) -> str:
    h = hashlib.sha256(nb_path.read_bytes())
    for p in sorted((ROOT / 'actlab').glob('*.py')): h.update(p.read_bytes())
    h.update(_KERNEL_SETUP.encode())
    return h.hexdigest()[:16]

def execute(nb_path: Path, timeout: int = 600, strict: bool = False) -> dict:
    "Execute `nb_path` (cwd nbs/) and return the notebook JSON with outputs; cached on notebook + package source"
    import nbformat
    from nbclient import NotebookClient
    key = CACHE / f'{nb_path.stem}-{_src_hash(nb_path)}.ipynb'
    if key.exists(): return json.loads(key.read_text())
    nb = nbformat.read(nb_path, as_version=4)
    skip_flags, skipped = tst_flags(), {}
    for i, c in enumerate(nb.cells):
        if c.cell_type != 'code': continue
        d = directives(c.source)
        if d.keys() & skip_flags or d.get('eval') == 'false':
            skipped[i] = c.source; c.source = ''
    nb.cells.insert(0, nbformat.v4.new_code_cell(_KERNEL_SETUP))
    t = time.time()
    client = NotebookClient(nb, timeout=timeout, kernel_name='python3', allow_errors=not strict, store_widget_state=True,
                            resources={'metadata': {'path': str(nb_path.parent)}})
    try: client.execute()
    except Exception as e:
        raise RuntimeError(f'executing {nb_path.name} failed (fix the notebook; nbdev_test --path {nb_path} shows it):\n{e}') from None
    errs = [i for i, c in enumerate(nb.cells) if any(o.get('output_type') == 'error' for o in c.get('outputs', []))]
    print(f'  executed {nb_path.name} in {time.time()-t:.1f}s' +
          (f'  WARNING: {len(errs)} cell(s) raised in a Jupyter kernel (cells {errs}); the page shows the traceback'
           if errs else ''), flush=True)
    nb.cells.pop(0)
    for c in nb.cells:   # number cells as if the setup cell had not run
        if c.get('execution_count'): c.execution_count -= 1
        for o in c.get('outputs', []):
            if o.get('execution_count'): o.execution_count -= 1
    for i, src in skipped.items(): nb.cells[i].source = src
    CACHE.mkdir(parents=True, exist_ok=True)
    for old in CACHE.glob(f'{nb_path.stem}-*.ipynb'): old.unlink()
    key.write_text(nbformat.writes(nb))
    return json.loads(key.read_text())

def _filter_defaults():
    """nbdev's FilterDefaults, except that a failing non-show_doc cell in nbdev's doc shell (a cell mixing imports
    with code that needs earlier, unexecuted cells: nbdev's FAQ "cells containing imports and other code") is
    reported instead of aborting; the notebook's own outputs come from the real execution anyway."""
    from nbdev import processors as P
    class tolerant_exec_show_docs(P.exec_show_docs):
        def __call__(self, cell):
            outs = cell.get('outputs')   # nbdev's shell overwrites outputs; keep the kernel's (widgets included)
            try: super().__call__(cell)
            except Exception as e:
                if P._is_showdoc(cell): raise
                print(f'  note: nbdev_docs (Quarto) would stop here: {str(e).splitlines()[0]} '
                      f'(cell mixes imports with other code; see nbdev FAQ)', flush=True)
                self.k.exc = None
            if outs is not None and not P._is_showdoc(cell): cell['outputs'] = outs
    tolerant_exec_show_docs.__name__ = 'exec_show_docs'
    class Filter(P.FilterDefaults):
        def base_procs(self):
            return [tolerant_exec_show_docs if p is P.exec_show_docs else p for p in super().base_procs()]
    return Filter()

def process(nb_json: dict, path: Path) -> dict:
    "nbdev 2's processing (FilterDefaults, as proc_nbs/nbdev_docs do), then Quarto's directives mapped for mkdocs"
    from execnb.nbio import dict2nb, nb2str
    cwd = os.getcwd(); os.chdir(path.parent)
    os.environ['IN_TEST'] = '1'
    try:
        nb_json = dict(nb_json, metadata=dict(nb_json.get('metadata', {})))
        widgets = nb_json['metadata'].pop('widgets', None)  # execnb mistakes jslink's 'source' key for cell source
        nbx = dict2nb(nb_json)
        nbx.path_ = str(path)
        _filter_defaults()(nbx)
        nb = json.loads(nb2str(nbx))
    finally: os.chdir(cwd)
    if widgets: nb['metadata']['widgets'] = widgets
    cells = []
    for c in nb['cells']:
        src = ''.join(c['source']) if isinstance(c.get('source'), list) else c.get('source', '')
        if c['cell_type'] == 'raw' and src.startswith('---'):   # nbdev frontmatter -> title + summary, as Quarto shows it
            import yaml
            meta = yaml.safe_load(src.strip().strip('-')) or {}
            md = f"# {meta.get('title', path.stem)}\n" + (f"\n> {meta['description']}\n" if meta.get('description') else '')
            cells.append({'cell_type': 'markdown', 'metadata': {}, 'source': md}); continue
        d = directives(src) if c['cell_type'] == 'code' else {}
        if d.get('include') == 'false': continue
        tags = set(c.get('metadata', {}).get('tags', []))
        if d.get('echo') == 'false': tags.add('remove_input')
        if d.get('output') == 'false': tags.add('remove_output')
        if c['cell_type'] == 'code':
            lines = src.splitlines()
            while lines and (_re_dir.match(lines[0]) or not lines[0].strip()): lines.pop(0)
            c['source'] = '\n'.join(lines)
            if not c['source'].strip() and not c.get('outputs'): continue
        c.setdefault('metadata', {})['tags'] = sorted(tags)
        cells.append(c)
    nb['cells'] = cells
    return nb

def copy_assets(proc: Path):
    "Local copies of the JS the pages load (no CDN): plotly.js from the plotly package, html-manager from npm"
    import plotly
    dst = proc / 'assets' / 'js'; dst.mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(plotly.__file__).parent / 'package_data' / 'plotly.min.js', dst / 'plotly.min.js')
    d3 = ASSETS / 'node_modules' / 'd3' / 'dist' / 'd3.min.js'
    if not (WIDGET_JS / 'embed.js').exists() or not d3.exists():
        print('  installing @jupyter-widgets/html-manager into docs_src/node_modules (npm ci)', flush=True)
        cmd = ['npm', 'ci' if (ASSETS / 'package-lock.json').exists() else 'install', '--no-audit', '--no-fund']
        subprocess.run(cmd, cwd=ASSETS, check=True)
    shutil.copy2(ASSETS / 'actlab.css', proc / 'assets' / 'actlab.css')
    shutil.copytree(ASSETS / 'screenshots', proc / 'docs_src' / 'screenshots')  # the README's images, at the paths index.ipynb uses
    shutil.copy2(d3, dst / 'd3.v6.min.js')   # sae-vis pages ask for https://d3js.org/d3.v6.min.js
    wdst = proc / 'assets' / 'jupyter-widgets'
    if wdst.exists(): shutil.rmtree(wdst)
    shutil.copytree(WIDGET_JS, wdst, ignore=shutil.ignore_patterns('*.map', '*amd*', 'libembed*'))

def build(only=None, do_exec=True, site=SITE, strict=False, strict_exec=False, extra=(), proc=PROC, jobs=2) -> Path:
    t0 = time.time()
    nbs = notebooks(only, extra)
    proc, site = Path(proc).resolve(), Path(site).resolve()
    if proc.exists(): shutil.rmtree(proc)
    proc.mkdir(parents=True)
    copy_assets(proc)
    import nbformat
    env = {'ACTLAB_NO_TRAIN': '1', 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'PYDEVD_DISABLE_FILE_VALIDATION': '1'}
    os.environ.update({k: os.environ.get(k, v) for k, v in env.items()})   # inherited by the kernels
    if do_exec:   # execution dominates: run `jobs` kernels at once (each notebook is single-threaded)
        from concurrent.futures import ThreadPoolExecutor   # the kernels are processes; threads just wait on them
        with ThreadPoolExecutor(max(1, jobs)) as ex:
            try: executed = dict(zip(nbs, ex.map(functools.partial(execute, strict=strict_exec), nbs)))
            except RuntimeError as e: sys.exit(f'FAIL: {e}')
    nav = []
    for p in nbs:
        nbj = executed[p] if do_exec else json.loads(nbformat.writes(nbformat.read(p, as_version=4)))
        nb = process(nbj, p)
        (proc / p.name).write_text(json.dumps(nb, indent=1))
        title = next((''.join(c['source']).splitlines()[0].lstrip('# ').strip() for c in nb['cells']
                      if c['cell_type'] == 'markdown' and ''.join(c['source']).startswith('# ')), p.stem)
        nav.append({('Home' if p.stem == 'index' else title): p.name})
    CACHE.mkdir(parents=True, exist_ok=True); cfg = CACHE / f'mkdocs.{proc.name}.yml'
    cfg.write_text(f"INHERIT: {ROOT / 'mkdocs.yml'}\ndocs_dir: {proc}\nsite_dir: {site}\nhooks: [{ASSETS / 'hooks.py'}]\nnav: {json.dumps(nav)}\n")
    t1 = time.time()
    cmd = [sys.executable, '-m', 'mkdocs', 'build', '-q', '-f', str(cfg)] + (['--strict'] if strict else [])
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, 'NO_MKDOCS_2_WARNING': '1'})
    (site / '.nojekyll').touch()
    print(f'built {site} ({len(nbs)} pages) in {time.time()-t0:.1f}s (mkdocs {time.time()-t1:.1f}s)')
    return site

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--only', nargs='+', help='only these notebooks (names without .ipynb)')
    ap.add_argument('--no-exec', action='store_true', help='do not execute the notebooks')
    ap.add_argument('--site', default=str(SITE), help='output folder (default: site/)')
    ap.add_argument('--strict-exec', action='store_true', help='fail if any cell raises when executed')
    ap.add_argument('--extra', nargs='+', default=[], help='extra notebook paths to add (tests use a fixture)')
    ap.add_argument('--proc', default=str(PROC), help="folder for nbdev's processed notebooks (default: _proc/)")
    ap.add_argument('--jobs', type=int, default=2, help='notebooks executed at once (default 2)')
    args = ap.parse_args()
    os.chdir(ROOT)
    build(args.only, not args.no_exec, Path(args.site).resolve(), strict_exec=args.strict_exec, extra=args.extra, proc=args.proc,
          jobs=args.jobs)

if __name__ == '__main__':
    main()
