"""The dashboards in a real browser: headless Debian Chromium driven by Playwright (executable_path, no
`playwright install`).

1. the offline docs site (scripts/build_docs.py, a subset) served on 127.0.0.1: the dashboards pages render their
   saved widget state with the local @jupyter-widgets/html-manager and their plotly figures with the local plotly.js,
   with every request to another host blocked; a widget is changed and the view checked to follow;
2. JupyterLab on 127.0.0.1 with a live kernel: the notebook is run, a dropdown in the `actlab-dashboard` container
   is changed and the Python callback must update the view.

Screenshots go to tests/artifacts/. Chromium is installed by scripts/install_browser.sh when missing; the tests
skip, saying why, only where it cannot be installed.
Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_browser.py -q
"""
import functools, http.server, json, os, re, shutil, socket, subprocess, sys, threading, time, urllib.request
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from docs_helpers import ROOT, FIXTURE, build_site, dashboard_pages

CHROMIUM = os.environ.get('ACTLAB_CHROMIUM', '/usr/bin/chromium')
ARTIFACTS = ROOT / 'tests' / 'artifacts'
DASHBOARDS_NB = ROOT / 'nbs' / '10_dashboards.ipynb'
# the dashboard's content without its <select>s: changes only when a callback redraws something
_VIEW_JS = '''el => { const c = el.cloneNode(true); c.querySelectorAll('select').forEach(s => s.remove());
                     return c.innerHTML; }'''
ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
        '--no-first-run', '--disable-sync', '--disable-dev-shm-usage']

@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    if not Path(CHROMIUM).exists() or not _importable('playwright'):
        r = subprocess.run(['bash', str(ROOT / 'scripts' / 'install_browser.sh')], capture_output=True, text=True,
                           env={**os.environ, 'PYTHON': sys.executable})
        if r.returncode or not Path(CHROMIUM).exists() or not _importable('playwright'):
            pytest.skip(f'Chromium/Playwright cannot be installed here (scripts/install_browser.sh: '
                        f'{(r.stderr or r.stdout).strip()[-300:]})')
    from playwright.sync_api import sync_playwright
    udd = tmp_path_factory.mktemp('chromium-profile')
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(udd), executable_path=CHROMIUM, headless=True, args=ARGS,
                                                   viewport={'width': 1280, 'height': 1000})
        yield ctx
        ctx.close()

def _importable(mod):
    import importlib.util
    return importlib.util.find_spec(mod) is not None

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _page(ctx, blocked):
    "a page whose requests to anything but 127.0.0.1 are blocked and recorded"
    page = ctx.new_page()
    def route(r):
        if r.request.url.startswith(('http://127.0.0.1', 'data:', 'blob:')): r.continue_()
        else: blocked.append(r.request.url); r.abort()
    page.route('**/*', route)
    return page

@pytest.fixture(scope='module')
def served_site(tmp_path_factory):
    pytest.importorskip('mkdocs_jupyter', reason='docs extras missing: pip install mkdocs-material mkdocs-jupyter')
    site = build_site(tmp_path_factory.mktemp('docs'))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield site, f'http://127.0.0.1:{httpd.server_address[1]}'
    httpd.shutdown()

def test_docs_site_dashboards_render_and_react(browser, served_site):
    site, url = served_site
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name, html_path in dashboard_pages(site).items():
        blocked, errors = [], []
        page = _page(browser, blocked)
        page.on('pageerror', lambda e: errors.append(str(e)))
        page.goto(f'{url}/{name}/', wait_until='load')
        dash = page.locator('.actlab-dashboard').first
        dash.wait_for(state='visible', timeout=30_000)   # html-manager rendered the saved widget state
        if 'plotly-graph-div' in html_path.read_text():
            page.wait_for_selector('.plotly-graph-div .main-svg', timeout=30_000)
        if name == 'widget_fixture':
            slider = page.locator('.actlab-dashboard .widget-hslider .widget-readout')
            assert slider.inner_text().strip() == '2'
            page.locator('.actlab-dashboard .widget-text input').fill('7')
            page.locator('.actlab-dashboard .widget-text input').press('Enter')
            page.wait_for_function("document.querySelector('.actlab-dashboard .widget-hslider .widget-readout')"
                                   ".innerText.trim() === '7'", timeout=10_000)   # jslink: the slider followed
        select = dash.locator('select').first
        if select.count():
            opts = select.locator('option').evaluate_all('os => os.map(o => o.value)')
            before = select.input_value()
            new = next(o for o in opts if o != before)
            select.select_option(new)
            assert select.input_value() == new != before
        dash.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / f'docs_{name}.png'), full_page=False)
        assert not blocked, f'{name}: the page tried to load from the network: {blocked[:5]}'
        assert not [e for e in errors if 'widget' in e.lower()], errors
        page.close()

@pytest.fixture(scope='module')
def jupyterlab(tmp_path_factory):
    if not _importable('jupyterlab'): pytest.skip('jupyterlab is not installed')
    root = tmp_path_factory.mktemp('lab')
    shutil.copy(FIXTURE, root / FIXTURE.name)
    if DASHBOARDS_NB.exists(): shutil.copy(DASHBOARDS_NB, root / DASHBOARDS_NB.name)   # a copy: autosave can't touch nbs/
    settings = root / '.settings' / '@jupyterlab' / 'apputils-extension'
    settings.mkdir(parents=True)
    (settings / 'notification.jupyterlab-settings').write_text(json.dumps({'fetchNews': 'false', 'checkForUpdates': False}))
    port, token = _free_port(), 'actlab-test'
    env = {**os.environ, 'ACTLAB_NO_TRAIN': '1', 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1',
           'JUPYTERLAB_SETTINGS_DIR': str(root / '.settings'), 'JUPYTER_RUNTIME_DIR': str(root / '.runtime'),
           'JUPYTERLAB_WORKSPACES_DIR': str(root / '.workspaces')}
    log = open(root / 'lab.log', 'w')
    proc = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', '--ip=127.0.0.1', f'--port={port}',
                             f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={root}',
                             '--LabApp.news_url=', '--LabApp.extension_manager=readonly']
                            + (['--allow-root'] if os.geteuid() == 0 else []),
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f'http://127.0.0.1:{port}'
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f'{url}/api/status?token={token}', timeout=2); break
            except Exception: time.sleep(0.5)
            if proc.poll() is not None: break
        else: pytest.fail(f'JupyterLab did not start: {(root / "lab.log").read_text()[-2000:]}')
        if proc.poll() is not None: pytest.fail(f'JupyterLab exited: {(root / "lab.log").read_text()[-2000:]}')
        yield url, token, root
    finally:
        proc.terminate()
        try: proc.wait(20)
        except subprocess.TimeoutExpired: proc.kill()
        log.close()

def test_jupyterlab_dashboard_callback_updates_view(browser, jupyterlab):
    url, token, root = jupyterlab
    blocked = []
    page = _page(browser, blocked)
    page.goto(f'{url}/lab/tree/{FIXTURE.name}?token={token}&reset', wait_until='domcontentloaded')
    page.wait_for_selector('.jp-Notebook .jp-Cell', timeout=90_000)
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"], .jp-KernelStatus', timeout=90_000)
    try:
        try:   # JupyterLab may ask which kernel to start: take the preselected Python 3
            page.locator('.jp-Dialog button.jp-mod-accept').click(timeout=8_000)
        except Exception: pass
        page.get_by_role('menuitem', name='Run', exact=True).click()
        page.get_by_text('Run All Cells', exact=True).click()
        dash = page.locator('.jp-OutputArea .actlab-dashboard').first
        dash.wait_for(state='visible', timeout=90_000)
        view = dash.locator('.fixture-view')
        assert view.inner_text().strip() == 'family: prefix'
        dash.locator('select').first.select_option('suffix')
        page.wait_for_function("document.querySelector('.actlab-dashboard .fixture-view').innerText.trim()"
                               " === 'family: suffix'", timeout=30_000)   # the kernel's callback re-rendered the view
    except Exception:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / 'jupyterlab_failure.png'))
        raise
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    dash.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / 'jupyterlab_fixture.png'))
    page.close()

def _open_and_run_all(page, url, token, name):
    page.goto(f'{url}/lab/tree/{name}?token={token}&reset', wait_until='domcontentloaded')
    page.wait_for_selector('.jp-Notebook .jp-Cell', timeout=90_000)
    try:   # JupyterLab may ask which kernel to start: take the preselected Python 3
        page.locator('.jp-Dialog button.jp-mod-accept').click(timeout=8_000)
    except Exception: pass
    page.get_by_role('menuitem', name='Run', exact=True).click()
    page.get_by_text('Run All Cells', exact=True).click()

# --- the study's report and the standalone dashboards of a real (small) run, and the live notebook's linked views ---
SCREENSHOTS = ROOT / 'docs_src' / 'screenshots'   # referenced by README.md (nbs/index.ipynb): rewritten by every browser run
_OVERFLOW_JS = '() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]'


@pytest.fixture(scope='module')
def study_run(tmp_path_factory):
    "A small study, every phase, then `actlab dashboard RESULTS --out SITE` from the data the run saved; both served on 127.0.0.1."
    from actlab.study import StudyConfig, ExtractionPhase, SAEPhase, run_study
    from actlab.tasks import TaskConfig
    from actlab.patching import PatchingConfig
    from actlab.cli import main
    from actlab.dashboards import find_d3
    root = tmp_path_factory.mktemp('study')
    if find_d3() is None:   # sae-vis needs a local d3 (docs_src/node_modules, npm ci): the same assets the docs site uses
        from docs_helpers import load_build_docs
        load_build_docs().copy_assets(root / 'proc')
    cfg = StudyConfig(name='browser', task=TaskConfig(n_per_cell=12, suffix_lengths=(1, 4, 8)),
                      patching=PatchingConfig(sites=('resid_pre', 'head')), extraction=ExtractionPhase(n_top_sites=1, progress=False),
                      sae=SAEPhase(steps=200, d_sae=128, batch_size=128, norm_rows=256))
    folder = run_study(cfg, root / 'results', progress=False)
    assert main(['dashboard', str(folder), '--out', str(root / 'site')]) == 0
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f'http://127.0.0.1:{httpd.server_address[1]}'
    httpd.shutdown()


def _open(browser, url, width=1400):
    blocked, errors = [], []
    page = _page(browser, blocked)
    page.set_viewport_size({'width': width, 'height': 1000})
    page.on('console', lambda m: errors.append(m.text) if m.type == 'error' else None)
    page.on('pageerror', lambda e: errors.append(str(e)))
    page.goto(url, wait_until='load')
    return page, blocked, errors


def test_report_findings_fit_and_quiet(browser, study_run):
    root, url = study_run
    for width in (1280, 1400, 1920):
        page, blocked, errors = _open(browser, f'{url}/results/browser/report.html', width)
        page.wait_for_selector('.plotly-graph-div .main-svg', timeout=30_000)
        page.wait_for_timeout(500)
        sw, cw = page.evaluate(_OVERFLOW_JS)
        assert sw <= cw, f'report scrolls sideways at {width} px: {sw} > {cw}'
        assert not errors and not blocked, (errors, blocked)
        box = page.locator('#findings')
        assert box.is_visible()
        rows = box.locator('tr').count() - 1
        text = box.inner_text()
        assert rows >= 4 and re.search(r'\d\.\d', text) and ('holds' in text), text[:500]
        for fig in page.locator('figure').all():   # every figure: a caption, and no wider than the page
            assert 'What to look for' in fig.locator('figcaption').inner_text()
            assert fig.bounding_box()['width'] <= cw
        if width == 1400:
            ARTIFACTS.mkdir(parents=True, exist_ok=True); SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / 'report_1400.png'), full_page=True)
            box.screenshot(path=str(SCREENSHOTS / 'findings.png'))
            href = box.locator('a[href^="#fig-"]').first.get_attribute('href')
            assert page.locator(href).count() == 1, f'findings link {href} has no figure'   # the link lands on its figure
        page.close()


def test_standalone_dashboards_linked_and_fit(browser, study_run):
    root, url = study_run
    site = root / 'site'
    names = sorted(p.stem for p in site.glob('*.html'))
    assert {'index', 'examples', 'features', 'rescue_overview', 'sae_vis', 'attention', 'logprobs', 'paths'} <= set(names)
    for name in names:
        page, blocked, errors = _open(browser, f'{url}/site/{name}.html')
        page.wait_for_timeout(1500 if name in ('sae_vis', 'attention', 'logprobs', 'examples') else 500)
        sw, cw = page.evaluate(_OVERFLOW_JS)
        assert sw <= cw, f'{name}.html scrolls sideways at 1400 px: {sw} > {cw}'
        assert not errors and not blocked, (name, errors, blocked)
        ctx = page.locator('.actlab-context').inner_text()
        assert 'model' in ctx and 'SAE' in ctx and 'hook_' in ctx, (name, ctx)   # every page says what it shows
        assert page.locator('nav.actlab-nav a').count() == len(names)
        page.close()
    # examples: pick an example, then one of its features: sae-vis opens on it
    page, blocked, errors = _open(browser, f'{url}/site/examples.html')
    page.wait_for_selector('#detail h2')
    second = page.locator('.ex-list a').nth(1)
    sid = second.get_attribute('data-id'); second.click()
    page.wait_for_function(f"document.querySelector('#detail h2').innerText.includes('example {sid}')")
    page.wait_for_selector('#heat .main-svg, #heat p')
    assert 'predicts' in page.locator('#detail').inner_text()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / 'site_examples.png'))
    link = page.locator('#detail a[href^="sae_vis.html#feature="]')
    if link.count() == 0:   # this example's top features are not on the sae-vis page: take one that has a link
        for a in page.locator('.ex-list a').all():
            a.click(); page.wait_for_timeout(100)
            if link.count(): break
    assert link.count(), 'no example links a feature to sae-vis'
    f = link.first.get_attribute('href').split('=')[-1]
    link.first.click()
    page.wait_for_url(f'**/sae_vis.html#feature={f}')
    page.wait_for_selector('#select-0', timeout=30_000)
    assert page.locator('#select-0').input_value() == f   # sae-vis shows the feature clicked in the example browser
    page.wait_for_timeout(1000)
    assert not errors and not blocked, (errors, blocked)
    page.screenshot(path=str(ARTIFACTS / 'site_sae_vis.png'))
    page.close()


def test_jupyterlab_linked_dashboard_after_run_all(browser, jupyterlab):
    "nbs/10_dashboards.ipynb, Run All in JupyterLab: no widget left in an error state, no sideways scroll at 1400 px, a feature "
    "chosen in the example browser shows in the feature browser (the kernel's link), and a dashboard's dropdown redraws its view."
    url, token, root = jupyterlab
    page = _page(browser, [])
    errors = []
    page.on('pageerror', lambda e: errors.append(str(e)))
    page.set_viewport_size({'width': 1400, 'height': 1000})
    try:
        _open_and_run_all(page, url, token, DASHBOARDS_NB.name)
        linked = page.locator('.jp-OutputArea .actlab-dashboard:has(.widget-tab)').last
        linked.wait_for(state='visible', timeout=600_000)
        page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=600_000)
        page.wait_for_timeout(2000)
        msgs = [m for m in page.locator('.jp-OutputArea .actlab-dashboard .actlab-message').all_inner_texts() if m.strip()]
        assert not msgs, f'widgets left showing an error after Run All: {msgs}'
        assert page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').count() == 0, 'a cell printed to stderr'
        over = page.evaluate('''() => [...document.querySelectorAll('.jp-Cell-outputArea')].filter(e => e.scrollWidth > e.clientWidth + 2).length''')
        assert over == 0, f'{over} output areas scroll sideways at 1400 px'
        feat = linked.locator('.actlab-example-browser .widget-text input').first
        fb_feat = linked.locator('.actlab-feature-browser .widget-text input').first
        fbox = linked.locator('.actlab-feature-browser').first.element_handle()
        before = fbox.evaluate('e => e.textContent')
        new = str(int(feat.input_value()) + 1)
        feat.fill(new); feat.press('Enter')
        page.wait_for_function('([el, v]) => el.value === v', arg=[fb_feat.element_handle(), new], timeout=60_000)   # linked in the kernel
        page.wait_for_function('([el, b]) => el.textContent !== b', arg=[fbox, before], timeout=60_000)   # and the feature browser redrew
        linked.locator('.lm-TabBar-tab, .p-TabBar-tab').nth(1).click()
        page.wait_for_timeout(1000)
        linked.scroll_into_view_if_needed()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True); ARTIFACTS.mkdir(parents=True, exist_ok=True)
        linked.screenshot(path=str(SCREENSHOTS / 'dashboard.png'))
        page.screenshot(path=str(ARTIFACTS / 'jupyterlab_linked.png'))
        assert not [e for e in errors if 'widget' in e.lower()], errors
        # the same Run All (one run of the notebook, not two): changing the first dashboard's first dropdown redraws its view
        dash = page.locator('.jp-OutputArea .actlab-dashboard').first
        dash.scroll_into_view_if_needed()
        select = dash.locator('select').first
        select.wait_for(state='visible', timeout=30_000)
        before = dash.evaluate(_VIEW_JS)
        opts = select.locator('option').evaluate_all('os => os.map(o => o.value)')
        select.select_option(next(o for o in opts if o != select.input_value()))
        page.wait_for_function(f'([el, b]) => ({_VIEW_JS})(el) !== b', arg=[dash.element_handle(), before], timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / 'jupyterlab_10_dashboards.png'))
    except Exception:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / 'jupyterlab_linked_failure.png'))
        raise
    finally: page.close()
