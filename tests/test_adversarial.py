"""Bad input and hostile data, as a careless or hostile user gives them (issue 16): each case gets one clear line that
names the fix (exit status 2 from the CLI), or is handled correctly with nothing lost, and nothing untrusted runs.

Everything here uses tiny random models, tiny configs and tiny stores written by the tests (never the built-in model's
numbers). Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_adversarial.py -q
"""
import os
os.environ.setdefault('ACTLAB_NO_TRAIN', '1')
import html.parser, json, pickle, subprocess, sys, warnings
from pathlib import Path

import numpy as np, pandas as pd, pytest, torch

from actlab.core import Config, ConfigError, atomic_write, ensure_file, check_device, write_manifest
from actlab.saes import SAETrainConfig, train_sae, load_sae, CheckpointError, UnsafeCheckpointError

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
HOOK = 'blocks.0.hook_resid_post'


def cli(*args, cwd=None):
    "Run the `actlab` CLI in a subprocess: (exit status, stderr)."
    r = subprocess.run([PY, '-m', 'actlab.cli', *map(str, args)], capture_output=True, text=True, cwd=cwd,
                       env={**os.environ, 'ACTLAB_NO_TRAIN': '1', 'OMP_NUM_THREADS': '1'}, timeout=300)
    return r.returncode, r.stderr


def one_line(err: str) -> str:
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and 'Traceback' not in err, err
    return lines[0]


# ---------------------------------------------------------------- 1. nothing untrusted is unpickled
def sparse(n=2048, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(16, d, generator=g), dim=-1)
    return ((torch.rand(n, 16, generator=g) < 0.1).float() * (1 + torch.rand(n, 16, generator=g))) @ dirs


def small_cfg(**kw):
    return SAETrainConfig(**{**dict(architecture='topk', d_sae=16, k=2, steps=60, batch_size=64, lr=3e-3, log_every=10,
                                    dead_feature_window=20, feature_sampling_window=20, checkpoint_every=20), **kw})


class _Evil:
    "A pickle that, if unpickled, would create a marker file."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))


def _stopped_run(tmp_path, name='run', stop=50):
    run = tmp_path / name
    part = train_sae(small_cfg(), sparse(), run, hook_name=HOOK, stop_after=stop, progress=False)
    assert not part.finished
    return run, part.trainer.checkpoints()


@pytest.mark.parametrize('target', ['trainer_state.pt', 'actlab_state.pt'])
def test_planted_pickle_never_runs(tmp_path, target):
    run, cks = _stopped_run(tmp_path)
    marker = tmp_path / 'PWNED'
    (cks[-1] / target).write_bytes(pickle.dumps(_Evil(marker)))
    if target == 'actlab_state.pt':  # an old-format state file dropped beside the new ones: never read at all
        r = train_sae(small_cfg(), sparse(), run, hook_name=HOOK, resume=True, progress=False)
        assert r.finished
    else:
        with pytest.raises(UnsafeCheckpointError, match='refusing to load .*trainer_state.pt.*objects other than tensors'):
            train_sae(small_cfg(), sparse(), run, hook_name=HOOK, resume=True, progress=False)
    assert not marker.exists()


def test_no_torch_load_without_weights_only():
    "The library never unpickles beyond tensors: every torch.load passes weights_only=True; no pickle/joblib loads."
    src = ''.join(p.read_text() for p in (ROOT / 'actlab').glob('*.py'))
    import re
    loads = re.findall(r'torch\.load\([^)]*\)', src)
    assert loads and all('weights_only=True' in l for l in loads), loads
    assert 'pickle.load' not in src and 'joblib.load' not in src and 'weights_only=False' not in src


def test_checkpoint_holds_nothing_to_unpickle_but_optimizer_state(tmp_path):
    _, cks = _stopped_run(tmp_path)
    names = sorted(p.name for p in cks[-1].iterdir())
    assert 'actlab_state.safetensors' in names and 'actlab_state.json' in names and 'actlab_state.pt' not in names
    assert [n for n in names if n.endswith(('.pt', '.pkl', '.bin'))] == ['trainer_state.pt']  # SAELens's, read weights_only


# ---------------------------------------------------------------- 8. damaged SAE checkpoints and data
def test_truncated_checkpoint_falls_back_to_older_bit_identical(tmp_path):
    full = train_sae(small_cfg(), sparse(), tmp_path / 'full', hook_name=HOOK, progress=False)
    run, cks = _stopped_run(tmp_path, stop=50)
    assert len(cks) == 2
    w = cks[-1] / 'sae_weights.safetensors'
    w.write_bytes(w.read_bytes()[:100])
    with pytest.warns(UserWarning, match='falling back to an older checkpoint'):
        r = train_sae(small_cfg(), sparse(), run, hook_name=HOOK, resume=True, progress=False)
    for k, v in full.sae.state_dict().items(): assert torch.equal(v, r.sae.state_dict()[k]), k
    pd.testing.assert_frame_equal(full.history.drop(columns='time'), r.history.drop(columns='time'))


def test_every_checkpoint_damaged_starts_over_with_a_warning(tmp_path):
    full = train_sae(small_cfg(), sparse(), tmp_path / 'full', hook_name=HOOK, progress=False)
    run, cks = _stopped_run(tmp_path, stop=50)
    for c in cks: (c / 'actlab_state.json').write_text('{')
    with pytest.warns(UserWarning, match='starting over'):
        r = train_sae(small_cfg(), sparse(), run, hook_name=HOOK, resume=True, progress=False)
    for k, v in full.sae.state_dict().items(): assert torch.equal(v, r.sae.state_dict()[k]), k


def test_damaged_sae_cfg_json_is_one_line(tmp_path):
    r = train_sae(small_cfg(steps=20, checkpoint_every=0), sparse(), tmp_path / 'run', hook_name=HOOK, progress=False)
    (tmp_path / 'run' / 'sae' / 'cfg.json').write_text('{"d_in": 8,')
    with pytest.raises(CheckpointError, match=r'cfg.json is damaged .*retrain'):
        load_sae(tmp_path / 'run')
    (tmp_path / 'run' / 'sae' / 'cfg.json').write_text('{"d_in": 8}')
    with pytest.raises(CheckpointError, match='cannot be loaded'):
        load_sae(tmp_path / 'run')


def test_damaged_run_config_json_is_one_line(tmp_path):
    run, _ = _stopped_run(tmp_path)
    (run / 'config.json').write_bytes(b'\x00\x01garbage')
    with pytest.raises(ConfigError, match='config.json is damaged'):
        train_sae(small_cfg(), sparse(), run, hook_name=HOOK, resume=True, progress=False)


def test_all_zero_training_data_is_one_line():
    with pytest.raises(ValueError, match='all zeros'):
        train_sae(small_cfg(checkpoint_every=0), torch.zeros(512, 8), progress=False)


# ---------------------------------------------------------------- 2. everything written into HTML is escaped
PAYLOAD = '<img src=x onerror="window.__xss=1"></script><script>window.__xss=1</script>'


def make_hostile(tok):
    "Turn a Hugging Face tokenizer into one whose every token string carries `PAYLOAD` (still a PreTrainedTokenizerFast)."
    base = type(tok)
    class Hostile(base):
        def decode(self, ids, **k):
            ids = ids.reshape(-1).tolist() if hasattr(ids, 'reshape') else ([ids] if isinstance(ids, int) else list(ids))
            return ''.join(base.decode(self, [int(i)], **k) + PAYLOAD for i in ids)
        def convert_ids_to_tokens(self, ids, **k):
            if isinstance(ids, int): return base.convert_ids_to_tokens(self, ids, **k) + PAYLOAD
            return [base.convert_ids_to_tokens(self, int(i), **k) + PAYLOAD for i in ids]
    tok.__class__ = Hostile
    return tok


class InjectionCounter(html.parser.HTMLParser):
    "Counts elements a payload would have injected: <img>, any on* attribute, a <script> whose text is the payload's."
    def __init__(self):
        super().__init__(); self.injected, self.scripts, self._in, self._text = 0, 0, False, ''
    def handle_starttag(self, tag, attrs):
        if tag == 'img' or any(k.lower().startswith('on') for k, _ in attrs): self.injected += 1
        if tag == 'script': self._in, self._text, self.scripts = True, '', self.scripts + 1
    def handle_endtag(self, tag):
        if tag == 'script':
            if self._text.strip() == 'window.__xss=1': self.injected += 1
            self._in = False
    def handle_data(self, d):
        if self._in: self._text += d


def count_injected(text: str) -> int:
    c = InjectionCounter(); c.feed(text); c.close()
    return c.injected


def test_injection_counter_can_fail():
    assert count_injected(f'<p>{PAYLOAD}</p>') == 2
    assert count_injected(f'<script>var a = ["{PAYLOAD}"];</script>') == 2  # the img and the script it opens
    assert count_injected('<p>&lt;img src=x&gt;</p><script>var a = "\\u003c/script\\u003e";</script>') == 0


@pytest.fixture(scope='module')
def hostile_pages(tmp_path_factory):
    from actlab.tasks import TaskConfig, make_pairs, build_word_tokenizer
    from actlab.patching import tiny_model
    from actlab.features import quick_sae
    from actlab.dashboards import build_dashboard_html
    torch.manual_seed(0)
    tc = TaskConfig(families=('id_control', 'junk_words'), suffix_lengths=(1, 2, 4), n_per_cell=24, operand_max=6)
    tok = build_word_tokenizer(tc)
    model = tiny_model(d_vocab=len(tok), n_ctx=32)
    model.tokenizer = tok
    pairs = make_pairs(tc, tok)
    sae = quick_sae(model, pairs, 'blocks.1.hook_resid_pre', d_sae=16, k=4, steps=60)
    make_hostile(tok)
    assert PAYLOAD in model.to_string(3) and PAYLOAD in pairs.tokenizer.convert_ids_to_tokens(3)
    out = tmp_path_factory.mktemp('hostile')
    files = build_dashboard_html(out / 'dashboards', model, pairs, sae, hook_name='blocks.1.hook_resid_pre')
    from actlab.study import Report
    rep = Report(f'study {PAYLOAD}'); rep.h(PAYLOAD); rep.p(PAYLOAD)
    rep.table(pd.DataFrame({PAYLOAD: [PAYLOAD]}))
    import plotly.graph_objects as go
    rep.fig(go.Figure(go.Bar(x=[PAYLOAD], y=[1]), layout=dict(title=PAYLOAD)))
    files['report'] = rep.write(out / 'report.html')
    # the widget HTML (what a notebook shows), written as one page per widget
    from actlab.dashboards import build_dashboard_data, ExampleBrowser, FeatureBrowser, tokens_html, message_html
    data = build_dashboard_data(model, sae, pairs)
    eb, fb = ExampleBrowser(data, feature=0), FeatureBrowser(data, feature=int(np.argmax((data.fa.corrupted > 0).sum(0))))
    parts = [eb.info.value, eb.tokens.value, eb.top.value, fb.examples.value, fb.logits.value, tokens_html([PAYLOAD], [1.0], title=PAYLOAD),
             message_html(PAYLOAD)]
    assert all(parts[:2]) and PAYLOAD.split('>')[0].replace('<', '&lt;') in ''.join(parts)  # the tokens are there, escaped
    files['widgets'] = atomic_write(out / 'widgets.html', '<!doctype html><html><body>' + ''.join(parts) + '</body></html>')
    return files


def test_every_page_escapes_a_hostile_tokenizer(hostile_pages):
    assert set(hostile_pages) >= {'features', 'rescue_overview', 'sae_vis', 'attention', 'logprobs', 'index', 'report', 'widgets'}
    counts = {name: count_injected(Path(p).read_text()) for name, p in hostile_pages.items()}
    assert counts == {name: 0 for name in hostile_pages}, counts
    # the hostile strings are on the pages (escaped), not dropped
    for name in ('sae_vis', 'attention', 'logprobs', 'widgets', 'report'):
        t = Path(hostile_pages[name]).read_text()
        assert 'window.__xss=1' in t, name


def _chromium():
    chromium = os.environ.get('ACTLAB_CHROMIUM', '/usr/bin/chromium')
    import importlib.util
    if not Path(chromium).exists() or importlib.util.find_spec('playwright') is None:
        pytest.skip(f'no Chromium at {chromium} or no playwright (bash scripts/install_browser.sh installs both)')
    return chromium


def test_every_page_escapes_a_hostile_tokenizer_in_chromium(hostile_pages):
    chromium = _chromium()
    from playwright.sync_api import sync_playwright
    from actlab.dashboards import find_d3
    args = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run',
            '--disable-dev-shm-usage', '--host-resolver-rules=MAP * ~NOTFOUND']
    results = {}
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=args)
        try:
            for name, f in hostile_pages.items():
                page = b.new_page()
                page.goto(Path(f).as_uri()); page.wait_for_timeout(1000)
                # (sae-vis builds every token's tooltip, with d3's .html(), when the page loads)
                results[name] = page.evaluate('''() => ({xss: window.__xss || 0, img: document.querySelectorAll('img').length,
                    onerror: document.querySelectorAll('[onerror]').length, nodes: document.querySelectorAll('*').length,
                    scripts: [...document.scripts].filter(s => s.textContent.trim() === 'window.__xss=1').length})''')
                page.close()
        finally: b.close()
    for name, r in results.items():
        assert (r['xss'], r['img'], r['onerror'], r['scripts']) == (0, 0, 0, 0), (name, r)
    if find_d3() is not None:  # with d3 the sae-vis page really renders (thousands of elements), so the check above bites
        assert results['sae_vis']['nodes'] > 1000, results['sae_vis']
