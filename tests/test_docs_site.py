"""The offline docs site (scripts/build_docs.py): built from nbdev's processed notebooks, dashboards pages carry
their figures and saved widget state, and no page needs a CDN.

Builds a subset (index, the dashboards/features notebooks when they exist, and a widget fixture) into a temp dir;
ACTLAB_DOCS_FULL=1 builds every notebook. Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_docs_site.py -q
"""
import re, sys
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from docs_helpers import ROOT, REMOTE_LOAD, BUILTIN_WIDGET_MODULES, build_site, dashboard_pages, widget_state, subset

pytest.importorskip('mkdocs_jupyter', reason='docs extras missing: pip install mkdocs-material mkdocs-jupyter')

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    return build_site(tmp_path_factory.mktemp('docs'))

def test_pages_and_nav_in_notebook_order(site):
    names = subset() or [p.stem for p in sorted((ROOT / 'nbs').glob('[0-9]*.ipynb'))]
    for n in names:
        assert (site / ('' if n == 'index' else n) / 'index.html').exists(), n
    home = (site / 'index.html').read_text()
    links = [l for l in re.findall(r'href="(?:\./)?([0-9][^"/]*)/"', home)]
    ordered = list(dict.fromkeys(links))
    assert ordered == sorted(ordered), f'nav not in notebook order: {ordered}'
    assert (site / 'search' / 'search_index.json').exists(), 'search index missing'

def test_nbdev_processing_applied(site):
    "nbdev's processing: hidden cells and `#| export`'s directive lines do not show; frontmatter becomes the title"
    html = (site / 'widget_fixture' / 'index.html').read_text()
    assert '<h1' in html and 'Widget fixture' in html
    assert '#|' not in re.sub(r'<script.*?</script>', '', html, flags=re.S)

def test_dashboard_pages_carry_figures_and_widget_state(site):
    for name, page in dashboard_pages(site).items():
        html = page.read_text()
        state = widget_state(html)
        assert state.get('state'), f'{name}: no saved widget state'
        assert 'application/vnd.jupyter.widget-view+json' in html, f'{name}: no widget views'
        mods = {m['model_module'] for m in state['state'].values()}
        assert mods <= BUILTIN_WIDGET_MODULES, f'{name}: widgets html-manager would fetch from a CDN: {mods}'
        src = re.findall(r"widgetRendererSrc = '([^']*)'", html)
        assert src and all(not s.startswith('http') for s in src), src
        assert (page.parent / src[0]).resolve().is_file(), f'{name}: local widget renderer missing: {src[0]}'
        if name == 'widget_fixture' or 'plotly-graph-div' in html:
            assert 'plotly-graph-div' in html and 'Plotly.newPlot' in html, f'{name}: no plotly figure'
            js = re.findall(r'<script src="([^"]*plotly[^"]*)"', html)
            assert len(js) == 1 and (page.parent / js[0]).resolve().is_file(), f'{name}: local plotly.js: {js}'

def test_every_figure_page_loads_local_plotly(site):
    for page in site.rglob('index.html'):
        html = page.read_text()
        if 'plotly-graph-div' not in html: continue
        js = re.findall(r'<script src="([^"]*plotly[^"]*)"', html)
        assert len(js) == 1 and (page.parent / js[0]).resolve().is_file(), f'{page}: local plotly.js: {js}'

def test_no_cdn_anywhere(site):
    "no page loads anything from the network (scripts, styles, fonts, images, iframes' srcdoc included)"
    pages = list(site.rglob('*.html'))
    assert pages
    bad = {str(p.relative_to(site)): sorted(set(REMOTE_LOAD.findall(p.read_text())))[:5] for p in pages}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f'pages that load from the network: {bad}'


def test_pages_are_quiet_and_say_widgets_are_static(site):
    "no library warnings or TransformerLens notices in any page's outputs; widget pages say they are a snapshot"
    noise = ('UserWarning', 'Tried to stack head results', '/.venv/', 'site-packages/')
    for page in site.rglob('index.html'):
        text = re.sub(r'<script.*?</script>', '', page.read_text(), flags=re.S)
        found = [n for n in noise if n in text]
        assert not found, f'{page.relative_to(site)}: {found}'
    for name, page in dashboard_pages(site).items():
        assert 'actlab-static-note' in page.read_text(), f'{name}: no notice that its widgets are a saved snapshot'


def test_every_local_image_is_in_the_site(site):
    "Each <img> a page shows from this repo (the README's screenshots and figures) is copied into the site beside it."
    missing = []
    for page in site.rglob('*.html'):
        for src in re.findall(r'<img[^>]+src="([^"]+)"', page.read_text()):
            if re.match(r'(data:|https?:|//)', src): continue
            if not (page.parent / src.split('#')[0].split('?')[0]).exists(): missing.append(f'{page.relative_to(site)}: {src}')
    assert not missing, missing
