"""mkdocs hook: make every page work with no network.

- pages with plotly figures get one <script> for the local assets/js/plotly.min.js in <head> (the figures are
  rendered by scripts/build_docs.py with include_plotlyjs=False, so plotly.js is neither inlined per figure nor
  fetched from a CDN);
- nbconvert's widget loader points at the local @jupyter-widgets/html-manager (assets/jupyter-widgets/embed.js,
  the standalone build that needs no RequireJS) instead of a CDN;
- known CDN scripts that outputs embed (sae-vis's d3 v6, also inside iframe srcdoc) point at local copies;
- nbconvert's MathJax and mermaid loaders (cdnjs) are dropped (no local copies; the notebooks use neither);
- a page with saved widget state says, above its content, that those widgets are a snapshot (their Python callbacks
  need a kernel: open the notebook in JupyterLab to drive them).
"""
import re

_CDN_MATHJAX = re.compile(r'<script[^>]*src="(https?://[^"]*mathjax[^"]*)?"[^>]*>\s*</script>', re.I)
# nbconvert's mermaid loader imports mermaid from cdnjs when a page has a diagram: none of ours do, so drop it
_CDN_MERMAID = re.compile(r'<script type="module">(?:(?!</script>).)*?mermaid(?:(?!</script>).)*</script>', re.S)
# CDN script -> local copy (copied into assets/js by scripts/build_docs.py); relative URLs in an iframe's srcdoc
# resolve against the page, so the same relative path works there
LOCAL_COPIES = {'https://d3js.org/d3.v6.min.js': 'assets/js/d3.v6.min.js'}
_WIDGET_SRC = re.compile(r"(var widgetRendererSrc = )'[^']*';")

def _root(page) -> str:
    depth = page.url.count('/') if page.url else 0
    return '../' * depth

def on_post_page(output, page, config, **kw):
    root = _root(page)
    output = _CDN_MATHJAX.sub('', output)
    output = _CDN_MERMAID.sub('', output)
    output = _WIDGET_SRC.sub(lambda m: f"{m.group(1)}'{root}assets/jupyter-widgets/embed.js';", output)
    for cdn, local in LOCAL_COPIES.items(): output = output.replace(cdn, root + local)
    if 'application/vnd.jupyter.widget-view+json' in output and 'actlab-static-note' not in output:
        note = ('<div class="admonition note actlab-static-note"><p class="admonition-title">Widgets on this page are a saved snapshot</p>'
                '<p>They show the state the notebook left them in; their callbacks run in Python, so changing a control here redraws '
                'nothing. Open the notebook in JupyterLab (<code>jupyter lab nbs/</code>) and run it to use them.</p></div>')
        output = re.sub(r'(<article class="md-content__inner md-typeset">)', lambda m: m.group(1) + note, output, count=1)
    if 'plotly-graph-div' in output and 'assets/js/plotly.min.js' not in output:
        output = output.replace('</head>', f'<script src="{root}assets/js/plotly.min.js"></script>\n</head>', 1)
    return output
