"""Injected elements in every HTML page actlab writes, rendered with a hostile tokenizer (issue 16).

Every token string of a tiny random model's tokenizer carries `<img src=x onerror=...></script><script>...</script>`.
The dashboards (features, rescue overview, sae-vis, attention, log-probs, index) are written and the injected elements
counted by parsing each file (html.parser: <img>, on* attributes, <script> elements whose text is the payload's), and,
with --chromium, in headless Chromium (network blocked): injected <img>/<script> elements in the DOM and whether the
payload ran (window.__xss).

--unsafe turns the escaping off (circuitsvis/sae-vis JSON written with plain json.dumps again, sae-vis and log-probs
token strings not pre-escaped), which shows what the pages held before the fix.

Usage: .venv/bin/python bench/adversarial_html.py [--unsafe] [--chromium]   (sae-vis renders in Chromium only with a local
d3: set ACTLAB_D3_JS=/path/to/d3.min.js, e.g. from `npm install d3@6`)
"""
from __future__ import annotations
import argparse, contextlib, json, os, sys, tempfile
from pathlib import Path

os.environ.setdefault('OMP_NUM_THREADS', '1'); os.environ.setdefault('ACTLAB_NO_TRAIN', '1')
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))
import torch
from test_adversarial import make_hostile, count_injected  # the test's hostile tokenizer and counter


def pages(out: Path, unsafe: bool) -> dict:
    from actlab.tasks import TaskConfig, make_pairs, build_word_tokenizer
    from actlab.patching import tiny_model
    from actlab.features import quick_sae
    import actlab.dashboards as D
    torch.manual_seed(0)
    tc = TaskConfig(families=('id_control', 'junk_words'), suffix_lengths=(1, 2, 4), n_per_cell=24, operand_max=6)
    tok = build_word_tokenizer(tc)
    model = tiny_model(d_vocab=len(tok), n_ctx=32); model.tokenizer = tok
    pairs = make_pairs(tc, tok)
    sae = quick_sae(model, pairs, 'blocks.1.hook_resid_pre', d_sae=16, k=4, steps=60)
    make_hostile(tok)
    if unsafe:
        D._circuitsvis_script_safe = D._saevis_script_safe = contextlib.nullcontext
        D.entity_escape = str
        D.html = type('noescape', (), {'escape': staticmethod(lambda s, quote=True: s)})
    return D.build_dashboard_html(out, model, pairs, sae, hook_name='blocks.1.hook_resid_pre')


def chromium(files: dict) -> dict:
    from playwright.sync_api import sync_playwright
    args = ['--headless', '--no-sandbox', '--disable-gpu', '--host-resolver-rules=MAP * ~NOTFOUND']
    res = {}
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=os.environ.get('ACTLAB_CHROMIUM', '/usr/bin/chromium'), headless=True, args=args)
        for name, f in files.items():
            page = b.new_page(); page.goto(Path(f).as_uri()); page.wait_for_timeout(1000)
            res[name] = page.evaluate('''() => ({ran: window.__xss || 0, img: document.querySelectorAll('img').length,
                scripts: [...document.scripts].filter(s => s.textContent.trim() === 'window.__xss=1').length,
                elements: document.querySelectorAll('*').length})''')
            page.close()
        b.close()
    return res


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--unsafe', action='store_true'); ap.add_argument('--chromium', action='store_true')
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        files = pages(Path(d) / 'dash', a.unsafe)
        out = {'parsed': {n: count_injected(Path(f).read_text()) for n, f in files.items()}}
        if a.chromium: out['chromium'] = chromium(files)
    print(json.dumps(out, indent=1))
