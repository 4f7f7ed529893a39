"""Render README.md from nbs/index.ipynb without Quarto.

nbdev_readme needs Quarto, which cannot be installed offline. We run nbdev's own notebook processing
(directives, show_doc, frontmatter) into _proc/ and export the processed notebook with nbconvert's
markdown exporter. `--check` fails if README.md is not what the notebook renders to.
"""
import argparse, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def render() -> str:
    import json, os, yaml, nbformat
    from nbconvert import MarkdownExporter
    from execnb.nbio import read_nb, nb2str
    from nbdev.processors import FilterDefaults
    os.chdir(ROOT)
    nbx = read_nb(ROOT / 'nbs' / 'index.ipynb')
    os.environ['IN_TEST'] = '1'
    FilterDefaults()(nbx)  # nbdev's own processing, as proc_nbs does it for Quarto
    nb = json.loads(nb2str(nbx))
    meta = {}
    cells = []
    for c in nb['cells']:
        src = ''.join(c['source']) if isinstance(c['source'], list) else c['source']
        if c['cell_type'] == 'raw' and src.startswith('---'):
            meta = yaml.safe_load(src.strip().strip('-')) or {}; continue
        cells.append(c)
    nb['cells'] = cells
    node = nbformat.reads(json.dumps(nb), as_version=4)
    body, _ = MarkdownExporter(exclude_input_prompt=True, exclude_output_prompt=True).from_notebook_node(node)
    head = f"# {meta.get('title', 'actlab')}\n\n" + (f"> {meta['description']}\n\n" if meta.get('description') else '')
    body = re.sub(r'\n{3,}', '\n\n', body).strip() + '\n'
    return '<!-- generated from nbs/index.ipynb by scripts/build_readme.py: edit the notebook, not this file -->\n\n' + head + body

def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--check', action='store_true', help='fail if README.md is stale instead of writing it')
    args = ap.parse_args()
    text, readme = render(), ROOT / 'README.md'
    if args.check:
        if not readme.exists() or readme.read_text() != text:
            print('FAIL: README.md is stale: run `python scripts/build_readme.py` and commit'); sys.exit(1)
        print('README.md is current')
    else:
        readme.write_text(text); print(f'wrote {readme}')

if __name__ == '__main__':
    main()
