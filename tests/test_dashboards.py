"Integration tests of actlab.dashboards: widgets driven programmatically, bad input, sae-vis, circuitsvis and standalone HTML."
import os
os.environ.setdefault('ACTLAB_NO_TRAIN', '1')
import time
import numpy as np, pytest, torch
from actlab.models import load_model
from actlab.tasks import TaskConfig, make_pairs
from actlab.extract import extract, ExtractConfig
from actlab.features import quick_sae
from actlab.dashboards import (build_dashboard_data, DashboardInputError, ExampleBrowser, FeatureBrowser, RescueOverview, dashboard,
                               open_dashboard, saevis_dashboard, concat_prompts, attention_html, logprobs_html, build_dashboard_html,
                               saevis_adapter, save_dashboard_data, load_dashboard_data, SaeVisView, saevis_features)

@pytest.fixture(scope='module')
def setup():
    torch.manual_seed(0)
    model = load_model('builtin', device='cpu')
    pairs = make_pairs(TaskConfig(), model.tokenizer).filter(corruption_type=['id_control', 'junk_words', 'punctuation'])
    sae = quick_sae(model, pairs, 'blocks.1.hook_resid_pre', steps=200)
    return model, pairs, sae, build_dashboard_data(model, sae, pairs)

def test_data(setup):
    model, pairs, sae, data = setup
    assert len(data.df) == len(pairs) and data.d_sae == sae.cfg.d_sae
    assert data.families == ['id_control', 'junk_words', 'punctuation'] and data.suffix_lengths == [1, 2, 4, 8]
    with pytest.raises(DashboardInputError, match='out of range'): data.check_feature(data.d_sae)

def test_example_browser(setup):
    *_, data = setup
    eb = ExampleBrowser(data, feature=0)
    assert 'actlab-dashboard' in eb.widget._dom_classes
    assert all(w.description for w in (eb.family, eb.suffix_length, eb.example, eb.feature))
    v0, e0 = eb.tokens.value, eb.example.value
    eb.family.value = 'punctuation'; eb.suffix_length.value = 4
    assert eb.example.value != e0 and eb.tokens.value != v0 and eb.message.value == ''
    row = data.df[data.df.example_id == eb.example.value].iloc[0]
    assert row.corruption_type == 'punctuation' and row.suffix_length == 4
    assert f'{row.rescue_score:.2f}' in eb.info.value if not row.survives else 'n/a' in eb.info.value
    assert eb.heatmap.outputs and 'application/vnd.plotly.v1+json' in eb.heatmap.outputs[0]['data']
    t = eb.tokens.value
    eb.feature.value = int(np.argmax(data.token_acts[eb.example.value].max(0)))
    assert eb.tokens.value != t
    eb.feature.value = 10_000
    assert 'out of range' in eb.message.value and eb.tokens.value == ''
    eb.feature.value = 1
    assert eb.message.value == '' and eb.tokens.value

def test_feature_browser(setup):
    *_, data = setup
    fb = FeatureBrowser(data, feature=0)
    busiest = int(np.argmax((data.fa.corrupted > 0).sum(0)))
    fb.feature.value = busiest
    assert f'feature {busiest}' == fb.figures['features'].layout.title.text
    assert fb.examples.value.count('actlab-tokens') >= 1 and 'promoted' in fb.logits.value
    fb.feature.value = -3
    assert 'out of range' in fb.message.value and fb.plots.outputs == () and fb.examples.value == ''

def test_rescue_overview(setup):
    *_, data = setup
    ro = RescueOverview(data).precompute()
    t0 = ro.figures['layer_pos'].layout.title.text
    start = time.perf_counter(); ro.suffix_length.value = 8; took = time.perf_counter() - start
    assert ro.figures['layer_pos'].layout.title.text != t0
    start = time.perf_counter(); ro.suffix_length.value = 1; cached = time.perf_counter() - start
    assert cached < 0.5, cached  # redraw from the cache
    ro.families.value = ()
    assert 'no family selected' in ro.message.value and ro.layer_pos.outputs == ()
    ro.families.value = ('junk_words',)
    assert ro.message.value == '' and len(ro.figures['head'].data) == 2

def test_dashboard_tabs_and_store_hook(setup, tmp_path):
    model, pairs, sae, data = setup
    box = dashboard(data)
    assert len(box.tab.children) == 3 and 'actlab-dashboard' in box._dom_classes and data.hook_name in box.children[0].value
    store = extract(model, pairs, tmp_path / 's', ExtractConfig(hooks=('blocks.0.hook_resid_pre',), also_clean=True, progress=False))
    w = open_dashboard(model, sae, pairs, store=store)  # the SAE reads blocks.1: message, not a traceback
    assert 'actlab-message' in w.children[0].value and 'blocks.1.hook_resid_pre' in w.children[0].value
    good = extract(model, pairs, tmp_path / 'g', ExtractConfig(hooks=('blocks.1.hook_resid_pre',), also_clean=True, progress=False))
    tab2 = open_dashboard(model, sae, pairs, store=good, patching=data.patching)
    assert len(tab2.tab.children) == 3

def test_saevis_and_circuitsvis(setup):
    model, pairs, sae, data = setup
    toks = concat_prompts(model, pairs, n_rows=16)
    assert toks.shape == (16, model.cfg.n_ctx) and (toks[:, 0] == model.tokenizer.bos_token_id).all()
    page = saevis_dashboard(model, sae, [0, 1], toks, probes={'dir': np.ones(model.cfg.d_model)})
    assert "PROBE 'dir'" in page and 'src="https://cdn.plot.ly' not in page
    assert not hasattr(sae.cfg, 'hook_layer')  # the adapter cleans up
    with saevis_adapter(sae): assert sae.cfg.hook_layer == 1 and sae.cfg.hook_name == 'blocks.1.hook_resid_pre'
    with pytest.raises(DashboardInputError, match='out of range'): saevis_dashboard(model, sae, [sae.cfg.d_sae], toks)
    g = pairs.groups()[0]
    att = attention_html(model, g.tokens('corrupted')[0], [(0, 1), (1, 2)])
    assert 'CircuitsVis.render' in att and 'unpkg.com' not in att and 'L1H2' in att
    assert 'CircuitsVis.render' in logprobs_html(model, g.tokens('corrupted')[0])

def test_build_dashboard_html(setup, tmp_path):
    model, pairs, sae, data = setup
    files = build_dashboard_html(tmp_path, model, pairs, sae, data=data)
    assert set(files) == {'features', 'rescue_overview', 'sae_vis', 'attention', 'logprobs', 'index', 'examples', 'paths'}
    assert (tmp_path / 'plotly.min.js').exists()
    ro = files['rescue_overview'].read_text()
    assert ro.count('Plotly.newPlot') == 2 * len(data.suffix_lengths) and 'cdn.plot.ly' not in ro.split('<body')[0]
    for name, p in files.items():  # styled, linked, and saying what it shows
        t = p.read_text()
        assert all(f'href="{q.name}"' in t for q in files.values()), name
        assert 'actlab-context' in t and data.hook_name in t and 'd_sae' in t, name
    assert 'prompt &quot;' in files['attention'].read_text() and 'the model predicts' in files['logprobs'].read_text()

def test_saevis_offline_d3(setup, tmp_path, monkeypatch):
    model, pairs, sae, data = setup
    fake = tmp_path / 'd3.js'; fake.write_text('/* local d3 */ window.d3 = {};')
    monkeypatch.setenv('ACTLAB_D3_JS', str(fake))
    toks = concat_prompts(model, pairs, n_rows=8)
    page = saevis_dashboard(model, sae, [0], toks)
    assert '/* local d3 */' in page and 'd3js.org' not in page
    saevis_dashboard(model, sae, [0], toks, path=tmp_path / 'out' / 'vis.html', offline='directory')
    assert (tmp_path / 'out' / 'd3.v6.min.js').read_text() == fake.read_text() and (tmp_path / 'out' / 'plotly.min.js').exists()
    assert 'src="https://d3js.org/d3.v6.min.js"' in saevis_dashboard(model, sae, [0], toks, d3_js=None)


def test_linked_tabs_and_example_views(setup):
    *_, data = setup
    box = dashboard(data)
    eb, fb, ro = (box.parts[k] for k in ('example browser', 'feature browser', 'rescue overview'))
    f = int(np.argsort(-(data.fa.corrupted > 0).sum(0))[2])
    eb.feature.value = f
    assert fb.feature.value == f and fb.figures['features'].layout.title.text == f'feature {f}'  # the other tab followed
    eb.pick.value = eb.pick.options[0][1]  # a top feature of the example
    assert fb.feature.value == eb.pick.options[0][1]
    e = fb.example.options[-1][1]; fb.example.value = e  # one of the feature's top examples
    assert eb.example.value == e and box.tab.selected_index == 0
    survived = data.df[data.df.survives.astype(bool)].example_id.iloc[0]
    failed = data.df[~data.df.survives.astype(bool)].example_id.iloc[0]
    eb.show(survived)
    assert 'rescue</b> n/a' in eb.info.value and len(eb.figures['heatmap'].data) == 0
    eb.show(failed)
    assert 'failed' in eb.info.value and len(eb.figures['heatmap'].data) >= 1 and 'predicts' in eb.prediction.value
    bars = [t for t in fb.figures['features'].data if t.type == 'bar']
    assert fb.figures['features'].layout.barmode == 'group' and all(b.error_y.array is not None for b in bars)
    x = ro.figures['layer_pos'].data[0].x
    assert 'answer pos' in x and not any(':' in v for v in x)  # pooled: positions, not one example's tokens


def test_saved_data_round_trip_and_saevis_view(setup, tmp_path):
    model, pairs, sae, data = setup
    p = save_dashboard_data(data, tmp_path)
    d2 = load_dashboard_data(tmp_path)
    assert p.exists() and len(d2.df) == len(data.df) and np.array_equal(d2.fa.corrupted, data.fa.corrupted)
    with pytest.raises(DashboardInputError, match='actlab run'): load_dashboard_data(tmp_path / 'none')
    (tmp_path / 'bad').mkdir(); (tmp_path / 'bad' / 'dashboard_data.npz').write_bytes(b'junk')
    with pytest.raises(DashboardInputError, match='damaged'): load_dashboard_data(tmp_path / 'bad')
    page = saevis_dashboard(model, sae, [0, 1], concat_prompts(model, pairs, n_rows=16),
                            probes={'a': np.ones(model.cfg.d_model), 'b': np.arange(model.cfg.d_model, dtype=float)})
    assert saevis_features(page) == [0, 1] and '(none)' not in page and "PROBE 'a, b'" in page
    v = SaeVisView(page, 1)
    assert '&quot;1&quot;' in v.view.value and v.message.value == ''
    v.feature.value = 5
    assert 'not on this sae-vis page' in v.message.value


def test_saved_data_never_runs_code_from_the_file(tmp_path):
    "A file a user could have placed is read as arrays and JSON only: pickled objects and non-actlab classes are refused."
    import io, json
    def write(tree, **arrays):
        buf = io.BytesIO()
        np.savez(buf, tree=np.frombuffer(json.dumps(tree).encode(), dtype=np.uint8), **arrays)
        (tmp_path / 'dashboard_data.npz').write_bytes(buf.getvalue())
    version = {'__dict__': [['version', 2], ['data', None]]}
    write(version, a0=np.array([object()], dtype=object))  # np.savez pickles object arrays; loading must refuse them
    with pytest.raises(DashboardInputError, match='damaged'): load_dashboard_data(tmp_path)
    write({'__dict__': [['version', 2], ['data', {'__dc__': 'os:system', 'fields': {}}]]})
    with pytest.raises(DashboardInputError, match='not an actlab class'): load_dashboard_data(tmp_path)
    write({'__dict__': [['version', 2], ['data', {'__dc__': 'actlab.core:check', 'fields': {}}]]})
    with pytest.raises(DashboardInputError, match='not an actlab dataclass'): load_dashboard_data(tmp_path)


def test_circuit_tab_node_click_opens_the_feature(setup):
    "A click on a feature node of the dashboard's SAE opens it in the feature browser; an error node says why it cannot."
    from actlab.circuits import site_saes, feature_effects, family_circuit
    from actlab.dashboards import circuit_tab
    model, pairs, sae, data = setup
    cp = pairs.filter(corruption_type=['junk_words'], suffix_length=[4, 8])
    saes = {data.fa.hook_name: sae, **site_saes(model, cp, ['blocks.3.hook_resid_pre'], steps=100)}
    c = family_circuit(model, saes, cp, feature_effects(model, saes, cp), 'junk_words', n_nodes=3, n_boot=100)
    ct = circuit_tab(data, c)
    tr = next(t for t in ct.view.data if t.name == 'nodes')
    i = next(i for i, (s, f) in enumerate(tr.customdata) if s == data.fa.hook_name and f != 'error')
    class Points: point_inds = [i]
    ct.view._actlab_click(tr, Points, None)  # what plotly calls on a click on that node
    assert ct.browser.feature.value == int(tr.customdata[i][1]) and ct.note.value == ''
    Points.point_inds = [next(i for i, (s, f) in enumerate(tr.customdata) if f == 'error')]
    ct.view._actlab_click(tr, Points, None)
    assert 'error node' in ct.note.value
