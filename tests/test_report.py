"""The study report's findings box (`actlab.study.Report`), built from a `claims.json` this test writes in the shared
format `{"claims": [Claim.to_dict() + optional "figure", ...]}`, and its figure captions and sizing."""
import json, re
import numpy as np, pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from actlab.metrics import Claim
from actlab.study import Report, add_claims, read_claims, findings_html, fit_figure, relabel_positions, plot_condition_intervals


def _claims():
    return [Claim('site_rescues', 'the selected sites rescue held-out failures', True,
                  dict(estimate=0.71234567, ci_low=0.6512, ci_high=0.7788, n=123)).to_dict() | {'figure': 'fig-rescue-layer-pos'},
            Claim('probe_beats_majority', 'the survival probe beats the majority class', False, dict(estimate=0.01, ci_low=-0.02, ci_high=0.04)).to_dict(),
            dict(name='nested', statement='one entry per family', holds=True, evidence=dict(junk=dict(short=0.9, long=0.1)))]


def test_findings_box_from_claims_json(tmp_path):
    (tmp_path / 'claims.json').write_text(json.dumps({'claims': _claims()}))
    add_claims(tmp_path, [Claim('probe_beats_majority', 'replaced', True, dict(estimate=0.2))])  # same name: replaced, others kept
    names = [c['name'] for c in read_claims(tmp_path)]
    assert names == ['site_rescues', 'nested', 'probe_beats_majority']
    r = Report('t')
    z = np.random.default_rng(0).normal(size=(3, 4))
    fig = make_subplots(2, 2)
    for i in (1, 2):
        fig.add_trace(go.Heatmap(z=z, x=['-4:a', '-3:b', '-2:c', '-1:='], zmin=-1, zmax=1, colorscale='RdBu', showscale=i == 1), i, 1)
        fig.add_trace(go.Heatmap(z=abs(z), x=['-4:a', '-3:b', '-2:c', '-1:='], zmin=0, zmax=2, colorscale='Viridis', showscale=i == 1), i, 2)
    r.fig(fig.update_layout(title='resid_pre rescue by family, suffix 2', width=1718))
    page = r.write(tmp_path / 'report.html').read_text()
    box = page[page.index('<section id="findings">'):page.index('</section>')]
    assert '0.712 <span class="ci">[0.651, 0.779]</span>' in box  # rounded, with its interval
    assert box.count('✔ holds') == 3 and 'junk</b> short 0.9, long 0.1' in box
    assert 'href="#fig-rescue-layer-pos"' in box and 'id="fig-rescue-layer-pos"' in page  # the link lands on the figure
    fig_json = page[page.index('id="fig-rescue-layer-pos"'):]
    assert '"width":1718' not in fig_json and 'What to look for' in fig_json and 'S1' in fig_json and '-4:a' not in fig_json


def test_empty_and_damaged_claims(tmp_path):
    assert 'No claims yet' in findings_html([])
    (tmp_path / 'claims.json').write_text('{not json')
    try: read_claims(tmp_path); raise AssertionError('no error')
    except ValueError as e: assert 'damaged' in str(e)


def test_colorbars_clear_of_panels_and_offset_markers():
    fig = make_subplots(1, 2)
    fig.add_trace(go.Heatmap(z=[[0, 1]], zmin=-1, zmax=1), 1, 1); fig.add_trace(go.Heatmap(z=[[0, 2]], zmin=0, zmax=2, colorscale='Viridis'), 1, 2)
    g = fit_figure(fig)
    assert g.layout.xaxis.domain[1] < g.data[0].colorbar.x < g.layout.xaxis2.domain[0]
    t = pd.DataFrame(dict(condition=['a', 'b'] * 2, kind=['control'] * 4, suffix_length=[1, 1, 2, 2], n=[5] * 4, accuracy=[1.0] * 4,
                          accuracy_lo=[1.0] * 4, accuracy_hi=[1.0] * 4))
    f = plot_condition_intervals(t)
    assert len(f.data) == 2 and f.data[0].x[0] != f.data[1].x[0]  # two conditions at 1.0: side by side, both visible
    assert 'n ≥ 5' in f.layout.title.text
