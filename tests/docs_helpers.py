"Shared by tests/test_docs_site.py and tests/test_browser.py: build a small docs site once per session."
import importlib.util, json, os, re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / 'tests' / 'fixtures' / 'widget_fixture.ipynb'
DASHBOARD_NBS = ('10_dashboards', '09_features')     # picked up when they exist
# what a page would LOAD from the network (mentions inside bundled JS, e.g. plotly.js's default topojson URL, and
# links (<a href>) are not loads): tags with src/href to http(s), also HTML-escaped inside iframe srcdoc, CSS
# @import/url(), JS import("http...") and require.config paths
_Q = r'(?:"|\'|&quot;|&#x27;|&#39;)'
REMOTE_LOAD = re.compile(r'(?:<|&lt;)(?:script|link|img|iframe|source)\b(?:(?!>|&gt;).)*?\b(?:src|href)\s*=\s*' + _Q
                         + r'(?:https?:)?//[^"\'&\s]+' + r'|@import\s+(?:url\()?' + _Q + r'?https?://[^)"\';\s]+'
                         + r'|\bimport\(\s*' + _Q + r'https?://[^"\'&\s]+', re.S | re.I)
# widget model modules that @jupyter-widgets/html-manager's embed.js renders itself (anything else it would fetch)
BUILTIN_WIDGET_MODULES = {'@jupyter-widgets/controls', '@jupyter-widgets/base', '@jupyter-widgets/output'}

def load_build_docs():
    spec = importlib.util.spec_from_file_location('build_docs', ROOT / 'scripts' / 'build_docs.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

def subset() -> list:
    "index + the dashboards/features notebooks that exist (ACTLAB_DOCS_FULL=1: every notebook)"
    if os.environ.get('ACTLAB_DOCS_FULL'): return None
    return ['index'] + [n for n in DASHBOARD_NBS if (ROOT / 'nbs' / f'{n}.ipynb').exists()]

def build_site(tmp: Path) -> Path:
    bd = load_build_docs()
    return bd.build(only=subset(), site=tmp / 'site', proc=tmp / 'proc', extra=[FIXTURE])

def dashboard_pages(site: Path) -> dict:
    "{name: html path} for the pages that carry dashboards: the fixture, and 10_dashboards when it exists"
    pages = {'widget_fixture': site / 'widget_fixture' / 'index.html'}
    if (site / '10_dashboards' / 'index.html').exists(): pages['10_dashboards'] = site / '10_dashboards' / 'index.html'
    return pages

def widget_state(html: str) -> dict:
    m = re.search(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>', html, re.S)
    return json.loads(m.group(1)) if m else {}
