"""The circuit graph (actlab.circuits.circuit_html) in a real browser: headless Debian Chromium driven by Playwright,
served on 127.0.0.1 with every other request blocked. A click on a node must call `window.actlabOpenFeature(site, feature)`
(the hook the dashboards' feature browser uses) with that node's site and feature, and show it on the page.
Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_browser_circuit.py -q
"""
import functools, http.server, os, threading
from pathlib import Path
import pytest

os.environ.setdefault('ACTLAB_NO_TRAIN', '1')
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / 'tests' / 'artifacts'
from test_browser import browser  # noqa: E402,F401,F811  (the one Chromium fixture: installs it if missing, skips where it cannot)

@pytest.fixture(scope='module')
def circuit_page(tmp_path_factory):
    import torch
    from actlab.models import load_model
    from actlab.tasks import TaskConfig, make_pairs
    from actlab.circuits import site_saes, feature_effects, family_circuit, circuit_html
    torch.manual_seed(0)
    model = load_model('builtin', device='cpu')
    pairs = make_pairs(TaskConfig(n_per_cell=8), model.tokenizer).filter(corruption_type=['junk_words'], suffix_length=[4, 8])
    saes = site_saes(model, pairs, ['blocks.2.hook_resid_pre', 'blocks.4.hook_resid_pre'], steps=100)
    c = family_circuit(model, saes, pairs, feature_effects(model, saes, pairs), 'junk_words', n_nodes=3, n_boot=100)
    d = tmp_path_factory.mktemp('circuit')
    circuit_html(c, d / 'index.html')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(d))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield c, f'http://127.0.0.1:{httpd.server_address[1]}/index.html'
    httpd.shutdown()

# pixel position of node i of the 'nodes' trace, in page coordinates
_NODE_XY = '''([i]) => { const gd = document.getElementById('actlab-circuit'); const L = gd._fullLayout;
  const tr = gd._fullData.find(t => t.name === 'nodes'); const box = gd.getBoundingClientRect();
  return [box.left + L._size.l + L.xaxis.l2p(tr.x[i]), box.top + L._size.t + L.yaxis.l2p(tr.y[i]), Array.from(tr.customdata[i])]; }'''

def test_clicking_a_node_opens_its_feature(browser, circuit_page):
    c, url = circuit_page
    blocked, errors = [], []
    page = browser.new_page()
    page.route('**/*', lambda r: r.continue_() if r.request.url.startswith(('http://127.0.0.1', 'data:', 'blob:'))
               else (blocked.append(r.request.url), r.abort()))
    page.on('pageerror', lambda e: errors.append(str(e)))
    page.add_init_script('window.opened = []; window.actlabOpenFeature = (site, feature) => window.opened.push([site, feature]);')
    page.goto(url, wait_until='load')
    page.wait_for_selector('#actlab-circuit .main-svg', timeout=30_000)
    n = page.evaluate("document.getElementById('actlab-circuit')._fullData.find(t => t.name === 'nodes').x.length")
    assert n == len(c.nodes)
    xy = [page.evaluate(_NODE_XY, [i]) for i in range(n)]
    gap = lambda i: min([((xy[i][0] - xy[j][0]) ** 2 + (xy[i][1] - xy[j][1]) ** 2) ** 0.5 for j in range(n) if j != i] or [1e9])
    clear = [i for i in range(n) if gap(i) > 24]  # a click there can only hit node i (plotly picks the closest point)
    assert len(clear) >= 2, f'the circuit layout leaves fewer than two nodes clear of the others: {[round(gap(i)) for i in range(n)]}'
    for i in (clear[0], clear[-1]):  # two different nodes, first and last of the clear ones
        x, y, (site, feature) = xy[i]
        # plotly throttles hover and a click reports the last hovered point: wait until the hover is on node i, or a
        # loaded machine clicks with the previous node's hover data
        page.mouse.move(x, y)
        page.wait_for_function('''([i]) => { const h = document.getElementById('actlab-circuit')._hoverdata;
          return !!h && h.some(p => p.data.name === 'nodes' && p.pointNumber === i); }''', arg=[i], timeout=10_000)
        page.mouse.click(x, y)
        page.wait_for_function(f'window.opened.length >= {1 if i == clear[0] else 2}', timeout=10_000)
        assert page.evaluate('window.opened')[-1] == [site, feature]
        assert page.inner_text('#circuit-selected') == f'{site} {feature}'
        assert (site, feature) in set(zip(c.nodes.site, c.nodes.feature))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / 'circuit_graph.png'))
    assert not blocked, f'the page tried to load from the network: {blocked[:5]}'
    assert not errors, errors
    page.close()
