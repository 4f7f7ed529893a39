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


def cli_here(*args):
    "The same CLI in this process (`actlab.cli.main`): (exit status, stderr). Subprocess runs (`cli`) cost seconds of imports each."
    import contextlib, io
    from actlab.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try: rc = main([str(a) for a in args])
        except SystemExit as e: rc = e.code
    return rc, err.getvalue()


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


# ---------------------------------------------------------------- 3. a store that knows its own contents
import pyarrow as pa
from actlab.store import (StoreWriter, ActivationStore, combine, to_arrow, shard_name, StoreError, StoreDamagedError,
                          StoreLockedError, StoreConfigError)

SPEC = dict(config={'demo': 16}, columns={'x': {'shape': [2], 'dtype': 'float32'}}, n_rows=6, rows_per_shard=2)


def write_part(path, ids, worker=(0, 1)):
    w = StoreWriter(path, **{**SPEC, 'n_rows': len(ids)}, worker=worker)
    for j in w.todo():
        r = [ids[k] for k in w.rows_of(j)]
        w.write_shard(j, pa.table({'example_id': r, 'x': to_arrow(np.array([[i, -i] for i in r], np.float32))}))
    return w.finish()


@pytest.fixture
def parts(tmp_path):
    return [write_part(tmp_path / 'w0', [0, 2, 4, 6, 8, 10], (0, 2)), write_part(tmp_path / 'w1', [1, 3, 5, 7, 9, 11], (1, 2))]


def test_manifest_lists_every_shard_with_rows_and_sha256(parts):
    m = json.loads((parts[0] / 'manifest.json').read_text())
    from actlab.core import file_sha256
    assert [(s['file'], s['rows']) for s in m['shards']] == [(f'data/{shard_name(j, 0, 2)}', 2) for j in range(3)]
    assert all(s['sha256'] == file_sha256(parts[0] / s['file']) for s in m['shards'])
    assert ActivationStore(parts[0]).verify() == dict(checked=3, unchecked=[])


def test_missing_shard_is_an_error_naming_it_and_combine_refuses(parts, tmp_path):
    (parts[0] / 'data' / shard_name(1, 0, 2)).unlink()
    with pytest.raises(StoreDamagedError, match=rf'shard data/{shard_name(1, 0, 2)} of .* is missing; run the same extraction again'):
        ActivationStore(parts[0])
    with pytest.raises(StoreDamagedError, match='is missing'):
        combine(parts, tmp_path / 'all')
    assert not (tmp_path / 'all').exists() and not list(tmp_path.glob('.all*'))


@pytest.mark.parametrize('kind', ['foreign', 'duplicate'])
def test_extra_parquet_is_never_read_in(parts, tmp_path, kind):
    src = parts[0] / 'data' / shard_name(0, 0, 2)
    dst = parts[0] / 'data' / ('other.parquet' if kind == 'foreign' else 'copy-of-shard.parquet')
    if kind == 'foreign': pd.DataFrame({'example_id': [99], 'y': [1.0]}).to_parquet(dst)
    else: dst.write_bytes(src.read_bytes())
    with pytest.raises(StoreDamagedError, match=rf"does not list: \['{dst.name}'\]"):
        ActivationStore(parts[0])
    with pytest.raises(StoreDamagedError, match=dst.name):
        combine(parts, tmp_path / 'all')


def test_truncated_shard_is_one_line(parts):
    f = parts[1] / 'data' / shard_name(2, 1, 2)
    f.write_bytes(f.read_bytes()[:150])
    with pytest.raises(StoreDamagedError, match=rf'shard data/{f.name} of .* is truncated or corrupt .*re-extracts that shard'):
        ActivationStore(parts[1])


def test_flipped_bytes_are_caught_by_verify_and_combine(parts, tmp_path):
    f = parts[1] / 'data' / shard_name(0, 1, 2)
    b = bytearray(f.read_bytes()); b[12] ^= 0xFF; f.write_bytes(bytes(b))  # in the first data page: the footer still reads
    st = ActivationStore(parts[1])  # presence, rows and schema are fine ...
    with pytest.raises(StoreDamagedError, match=rf'shard data/{f.name} of .* is corrupt \(its SHA-256 differs'):
        st.verify()  # ... the checksum is not
    with pytest.raises(StoreDamagedError, match='is corrupt'):
        combine(parts, tmp_path / 'all')
    assert not (tmp_path / 'all').exists()


@pytest.mark.parametrize('text', ['', '{"shards": [', 'null', '\x00\xff'])
def test_corrupt_or_empty_manifest_is_one_line(parts, text):
    (parts[0] / 'manifest.json').write_bytes(text.encode('latin-1'))
    with pytest.raises(StoreDamagedError, match='overwrite=True') as e:
        ActivationStore(parts[0])
    assert '\n' not in str(e.value)
    with pytest.raises(StoreDamagedError):  # a resume says the same, and changes nothing
        StoreWriter(parts[0], **SPEC, worker=(0, 2))
    assert len(list((parts[0] / 'data').glob('*.parquet'))) == 3


def test_combine_refuses_its_own_input_as_output(parts):
    before = sorted(p.name for p in (parts[0] / 'data').iterdir())
    for out in (parts[0], parts[0] / 'sub', parts[0].parent):
        with pytest.raises(StoreError, match='overlaps'):
            combine(parts, out, overwrite=True)
    assert sorted(p.name for p in (parts[0] / 'data').iterdir()) == before and len(ActivationStore(parts[0])) == 6


def test_combine_builds_in_a_temp_folder_then_renames(parts, tmp_path, monkeypatch):
    good = combine(parts, tmp_path / 'all')
    assert len(good) == 12 and good.verify()['checked'] == 6
    import actlab.store as S
    calls = {'n': 0}
    real_link = os.link
    def flaky_link(a, b):
        calls['n'] += 1
        if calls['n'] == 4: raise OSError(28, 'No space left on device')
        return real_link(a, b)
    monkeypatch.setattr(S.os, 'link', flaky_link)
    monkeypatch.setattr(S.shutil, 'copy2', lambda a, b: (_ for _ in ()).throw(OSError(28, 'No space left on device')))
    with pytest.raises(StoreError, match='No space left'):
        combine(parts, tmp_path / 'all', overwrite=True)
    assert len(ActivationStore(tmp_path / 'all')) == 12  # the old output is untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.all')]  # no temporary folder left


def test_second_writer_is_refused_while_the_first_runs(tmp_path):
    code = ('import sys, time; from actlab.store import StoreWriter; '
            f'w = StoreWriter({str(tmp_path / "s")!r}, config={{"demo": 16}}, columns={{"x": {{"shape": [2], "dtype": "float32"}}}}, '
            'n_rows=6, rows_per_shard=2); print("ready", flush=True); time.sleep(60)')
    p = subprocess.Popen([PY, '-c', code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == 'ready'
        with pytest.raises(StoreLockedError, match=rf'being written by another process \(pid {p.pid}'):
            StoreWriter(tmp_path / 's', **SPEC)
    finally:
        p.kill(); p.wait()
    with pytest.warns(UserWarning, match=rf'stale lock .*pid {p.pid}'):  # the first one was killed: its lock is stale
        w = StoreWriter(tmp_path / 's', **SPEC)
    assert w.todo() == [0, 1, 2]


# ---------------------------------------------------------------- tiny model + pairs (random weights, the task's word tokenizer)
@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    from actlab.tasks import TaskConfig, make_pairs, build_word_tokenizer
    from actlab.patching import tiny_model
    from actlab.models import save_model
    tc = TaskConfig(families=('id_control', 'junk_words'), suffix_lengths=(1, 2), n_per_cell=6, operand_max=5)
    tok = build_word_tokenizer(tc)
    model = tiny_model(d_vocab=len(tok), n_ctx=32, seed=1)
    model.tokenizer = tok
    folder = save_model(model, tmp_path_factory.mktemp('tiny') / 'model')
    return model, make_pairs(tc, tok), tc, folder


def test_resume_re_extracts_a_damaged_shard(tiny, tmp_path):
    from actlab.extract import extract, ExtractConfig
    model, pairs, *_ = tiny
    cfg = ExtractConfig(hooks=('blocks.0.hook_resid_post',), rows_per_shard=8, progress=False)
    st = extract(model, pairs, tmp_path / 's', cfg)
    want = st.numpy('blocks.0.hook_resid_post')
    f = st.files[1]; b = bytearray(f.read_bytes()); b[len(b) // 3] ^= 0xFF; f.write_bytes(bytes(b))
    with pytest.warns(UserWarning, match=rf'{f.name} .* damaged .*re-extracted'):
        st2 = extract(model, pairs, tmp_path / 's', cfg)
    assert st2.verify()['checked'] == len(st2.files)
    np.testing.assert_array_equal(st2.numpy('blocks.0.hook_resid_post'), want)


def test_edited_architecture_is_another_model(tiny, tmp_path):
    "config.json's act_fn edited (same weights): the store refuses to mix the two models' rows."
    from actlab.extract import extract, ExtractConfig
    from actlab.models import load_model
    model, pairs, tc, folder = tiny
    cfg = ExtractConfig(hooks=('blocks.1.hook_resid_pre',), rows_per_shard=8, progress=False)
    extract(load_model(str(folder), device='cpu'), pairs, tmp_path / 's', cfg)
    meta = json.loads((folder / 'config.json').read_text())
    edited = tmp_path / 'edited'; import shutil; shutil.copytree(folder, edited)
    meta['hooked_config']['act_fn'] = 'relu'; (edited / 'config.json').write_text(json.dumps(meta))
    m2 = load_model(str(edited), device='cpu')
    with pytest.raises(StoreConfigError, match=r"model\.arch\.act_fn: 'gelu' -> 'relu'"):
        extract(m2, pairs, tmp_path / 's', cfg)


# ---------------------------------------------------------------- 6. labels never hide a fault
def test_nan_activations_get_a_flag_not_a_label(tiny, tmp_path):
    from actlab.extract import extract, ExtractConfig
    model, pairs, *_ = tiny
    def nan(x, hook): x[:3, -1, 0] = float('nan'); return x
    model.add_hook('blocks.0.hook_resid_post', nan)
    try:
        with pytest.warns(UserWarning, match='non-finite'):
            st = extract(model, pairs, tmp_path / 's', ExtractConfig(hooks=('blocks.1.hook_resid_pre',), rows_per_shard=8, progress=False))
    finally: model.reset_hooks()
    meta = st.metadata()
    bad = meta.nonfinite.to_numpy(bool)
    assert bad.sum() >= 3 and meta.survives[bad].isna().all() and meta.survives[~bad].notna().all()
    assert (meta.failure_class[bad] == '').all()
    assert st.manifest['nonfinite_rows'] == int(bad.sum())


def test_float_group_indices_are_refused_not_truncated():
    from actlab.probes import group_index
    with pytest.raises(ValueError, match=r'non-integer feature indices \[0.5\]'):
        group_index([[0.5, 1], [2, 3]], 4)


# ---------------------------------------------------------------- 7. validation before work (API and CLI)
from actlab.study import StudyConfig, run_study, ResultsFolderError


@pytest.mark.parametrize('text,key', [
    ('task:\n  families: junk_words\n', 'StudyConfig.task.families: expected a list'),
    ('task:\n  n_per_cell: "4"\n', 'StudyConfig.task.n_per_cell: expected an integer'),
    ('task:\n  n_per_cell: 4.5\n', 'StudyConfig.task.n_per_cell: expected an integer'),
    ('sae:\n  lr: fast\n', 'StudyConfig.sae.lr: expected a number'),
    ('task: null\n', 'StudyConfig.task: expected a mapping'),
    ('seed: abc\n', 'StudyConfig.seed: expected an integer'),
    ('phases: baseline\n', 'StudyConfig.phases: expected a list'),
    ('model:\n  device: banana\n', "'banana' is not a device"),
    ('task:\n  families: []\n', 'task.families is empty'),
    ('tsk: {}\n', 'unknown key'),
    ('task: [1,\n', 'not valid YAML at line'),
    ('task:\n\tseed: 1\n', 'use spaces'),
    ('- a\n- b\n', 'must be a YAML mapping'),
    ('sae:\n  feature_sampling_window: 0\n', 'feature_sampling_window must be >= 1'),
    ('sae:\n  lr: .inf\n', 'lr must be a finite number'),
    ('extraction:\n  batch_size: 0\n', 'batch_size and rows_per_shard must be >= 1'),
])
def test_wrong_config_is_one_line(text, key):
    with pytest.raises(ConfigError, match=None) as e:
        StudyConfig.from_yaml(text)
    assert key in str(e.value) and '\n' not in str(e.value), str(e.value)


def test_yaml_float_without_dot_is_a_number():
    assert StudyConfig.from_yaml('sae:\n  lr: 1e-3\n').sae.lr == 1e-3  # YAML 1.1 reads `1e-3` as a string


def test_bad_config_files_through_the_cli_exit_2_with_one_line(tmp_path):
    (tmp_path / 'empty.yaml').write_text('')
    (tmp_path / 'bin.yaml').write_bytes(bytes(range(256)) * 4)
    (tmp_path / 'dir.yaml').mkdir()
    (tmp_path / 'types.yaml').write_text('task:\n  families: junk_words\n')
    for i, (name, key) in enumerate((('empty.yaml', 'actlab config'), ('bin.yaml', 'not a text file'), ('dir.yaml', 'is a folder'),
                                     ('types.yaml', 'expected a list'), ('missing.yaml', 'actlab config'))):
        rc, err = (cli if i == 0 else cli_here)('run', tmp_path / name, '--out', tmp_path / 'res', '--no-progress')  # one real process
        assert rc == 2 and key in one_line(err), (name, err)
    assert not (tmp_path / 'res').exists()  # nothing written


@pytest.mark.parametrize('device,key', [('cuda:7', 'cuda:7'), ('banana', 'not a device'), ('cuda', 'no CUDA GPU')])
def test_devices_are_checked_up_front(tmp_path, device, key):
    if device == 'cuda' and torch.cuda.is_available(): pytest.skip('a GPU is visible here')
    if device == 'cuda:7' and torch.cuda.device_count() > 7: pytest.skip('this machine has 8 GPUs')
    from actlab.study import ModelConfig
    with pytest.raises(ConfigError, match=key):
        run_study(StudyConfig(model=ModelConfig(device=device)), tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_device_through_the_cli(tmp_path):
    (tmp_path / 'c.yaml').write_text('model:\n  device: cuda:7\n')
    rc, err = cli_here('run', tmp_path / 'c.yaml', '--out', tmp_path / 'res', '--no-progress')
    assert rc == 2 and 'cuda:7' in one_line(err) and not (tmp_path / 'res').exists()


def study_cfg(folder, name='t', **kw):
    from actlab.study import ModelConfig
    from actlab.tasks import TaskConfig
    from actlab.patching import PatchingConfig
    base = dict(name=name, task=TaskConfig(families=('id_control', 'junk_words'), suffix_lengths=(1, 2), n_per_cell=6, operand_max=5),
                model=ModelConfig(name=str(folder), device='cpu'), phases=('baseline',), patching=PatchingConfig(sites=('resid_pre',)))
    return StudyConfig(**{**base, **kw})


@pytest.mark.parametrize('change,key', [
    (dict(probes={'n_splits': 50}), 'probes.n_splits=50 but the pairs have only'),
    (dict(sae={'batch_size': 100000}), 'sae.batch_size=100000'),
    (dict(probes={'site': 'blocks.9.hook_resid_post'}), 'close matches'),
    (dict(task={'suffix_lengths': [40]}), "n_ctx is 32"),
])
def test_cross_field_constraints_before_phase_a(tiny, tmp_path, change, key):
    *_, folder = tiny
    from actlab.study import ProbesPhase, SAEPhase
    from actlab.tasks import TaskConfig
    cfg = study_cfg(folder, phases=('baseline', 'patching', 'extraction', 'probes', 'sae'))
    d = cfg.to_dict()
    for k, v in change.items(): d[k].update(v)
    try: cfg = StudyConfig.from_dict(d)
    except ConfigError as e: assert key in str(e); return
    with pytest.raises((ConfigError, ValueError), match=key):
        run_study(cfg, tmp_path, progress=False)
    assert not (tmp_path / 't').exists()  # refused before phase A wrote anything


def test_answers_outside_the_vocabulary_are_refused_before_phase_a(tiny, tmp_path):
    *_, folder = tiny  # the tokenizer knows numbers up to 10 only
    cfg = study_cfg(folder)
    d = cfg.to_dict(); d['task']['operand_max'] = 100
    with pytest.raises((ConfigError, ValueError), match='vocabulary|operand_max|not a single token|unknown'):
        run_study(StudyConfig.from_dict(d), tmp_path, progress=False)
    assert not (tmp_path / 't').exists()


# ---------------------------------------------------------------- 4. a results folder belongs to one run
def test_rerun_with_another_config_is_refused_then_moved_aside(tiny, tmp_path):
    *_, folder = tiny
    a = run_study(study_cfg(folder, phases=('baseline', 'patching')), tmp_path, progress=False)
    before = sorted(p.name for p in a.iterdir())
    with pytest.raises(ResultsFolderError, match=r'holds another run: .*seed: 0 -> 1.*--overwrite'):
        run_study(study_cfg(folder, seed=1), tmp_path, progress=False)
    assert sorted(p.name for p in a.iterdir()) == before  # nothing written, nothing lost
    b = run_study(study_cfg(folder, seed=1), tmp_path, progress=False, overwrite=True)
    m = json.loads((b / 'manifest.json').read_text())
    assert m['study']['seed'] == 1 and m['phases'] == ['baseline']
    assert 'patch_classes' not in m and 'top_sites' not in m and not (b / 'patching_examples.parquet').exists()  # never merged
    (old,) = tmp_path.glob('t.old-*')
    assert sorted(p.name for p in old.iterdir()) == before  # the old run, whole


def test_same_config_rerun_writes_a_fresh_manifest(tiny, tmp_path):
    *_, folder = tiny
    run_study(study_cfg(folder, phases=('baseline', 'patching')), tmp_path, progress=False)
    f = run_study(study_cfg(folder), tmp_path, progress=False)  # the same config, fewer phases
    m = json.loads((f / 'manifest.json').read_text())
    assert m['phases'] == ['baseline'] and 'patch_classes' not in m


def test_rerun_refused_through_the_cli(tiny, tmp_path):
    *_, folder = tiny
    (tmp_path / 'a.yaml').write_text(study_cfg(folder).to_yaml())
    (tmp_path / 'b.yaml').write_text(study_cfg(folder, seed=3).to_yaml())
    assert cli_here('pairs', tmp_path / 'a.yaml', '--out', tmp_path / 'r')[0] == 0
    rc, err = cli('pairs', tmp_path / 'b.yaml', '--out', tmp_path / 'r')  # a real process: exit status 2
    assert rc == 2 and '--overwrite' in one_line(err)
    rc, err = cli_here('pairs', tmp_path / 'b.yaml', '--out', tmp_path / 'r', '--overwrite')
    assert rc == 0, err
    assert json.loads((tmp_path / 'r' / 't' / 'manifest.json').read_text())['study']['seed'] == 3
    assert len(list((tmp_path / 'r').glob('t.old-*'))) == 1


# ---------------------------------------------------------------- 5. no partial files
def test_truncated_plotly_js_is_repaired(tmp_path):
    from actlab.study import Report
    from plotly.offline import get_plotlyjs
    js = tmp_path / 'plotly.min.js'
    js.write_text(get_plotlyjs()[: len(get_plotlyjs()) // 2])  # what a full disk left behind
    Report('r').write(tmp_path / 'report.html')
    assert js.read_text() == get_plotlyjs()


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    p = atomic_write(tmp_path / 'report.html', 'old page')
    import actlab.core as C
    real = C.os.fdopen
    class Full:
        def __init__(self, f): self.f = f
        def __enter__(self): return self
        def __exit__(self, *a): self.f.close()
        def write(self, b): self.f.write(b[:3]); raise OSError(28, 'No space left on device')
    monkeypatch.setattr(C.os, 'fdopen', lambda fd, mode: Full(real(fd, mode)))
    with pytest.raises(OSError, match='No space'):
        atomic_write(p, 'new page, longer')
    monkeypatch.undo()
    assert p.read_text() == 'old page' and sorted(x.name for x in tmp_path.iterdir()) == ['report.html']


def test_write_manifest_refuses_to_merge_a_damaged_one(tmp_path):
    (tmp_path / 'manifest.json').write_text('{"study": ')
    with pytest.raises(ConfigError, match='is damaged'):
        write_manifest(tmp_path, a=1)
    write_manifest(tmp_path, fresh=True, a=1)
    assert json.loads((tmp_path / 'manifest.json').read_text())['a'] == 1
