"""Render `nbs/index.ipynb` to GitHub-flavoured markdown for README.md, offline (no Quarto).

    python tools/readme.py            # write README.md
    python tools/readme.py --check    # exit 1 when README.md is out of date

Rules, following what `nbdev-readme` produces: markdown cells verbatim; code cells fenced as
python with their `#|` directives removed; cells marked `#| hide` (or `#| include: false`)
left out; `#| echo: false` keeps the output only; text outputs fenced, markdown outputs verbatim.
"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIRECTIVE = re.compile(r'^\s*#\s*\|\s*(.*)$')

def _directives(src):
    "Split a code cell into its `#|` directives and its remaining lines."
    ds, body = [], []
    lines = src.splitlines()
    i = 0
    while i < len(lines) and (m := DIRECTIVE.match(lines[i])):
        ds.append(m.group(1).strip()); i += 1
    body = lines[i:]
    return ds, '\n'.join(body).strip('\n')

def _src(cell): return ''.join(cell['source']) if isinstance(cell['source'], list) else cell['source']

def _outputs(cell):
    out = []
    for o in cell.get('outputs', []):
        if o['output_type'] == 'stream' and o.get('name') == 'stdout':
            out.append('```\n' + ''.join(o['text']).rstrip('\n') + '\n```')
        elif o['output_type'] in ('execute_result', 'display_data'):
            d = o.get('data', {})
            if 'text/markdown' in d: out.append(''.join(d['text/markdown']).strip('\n'))
            elif 'text/plain' in d and not ''.join(d['text/plain']).startswith('<IPython.core.display'):  # HTML-only (fastai's tables)
                out.append('```\n' + ''.join(d['text/plain']).rstrip('\n') + '\n```')
    return out

def render(nb_path=ROOT/'nbs'/'index.ipynb'):
    "Markdown text of the notebook at `nb_path`."
    nb = json.loads(Path(nb_path).read_text(encoding='utf-8'))
    parts = []
    for cell in nb['cells']:
        src = _src(cell)
        if cell['cell_type'] == 'markdown': parts.append(src.strip('\n')); continue
        if cell['cell_type'] != 'code': continue
        ds, body = _directives(src)
        if any(d in ('hide', 'include: false') or d.startswith('export') or d.startswith('default_exp') for d in ds): continue
        if 'echo: false' not in ds and body: parts.append('```python\n' + body + '\n```')
        parts += _outputs(cell)
    return '\n\n'.join(p for p in parts if p) + '\n'

if __name__ == '__main__':
    txt, readme = render(), ROOT/'README.md'
    if '--check' in sys.argv:
        ok = readme.exists() and readme.read_text(encoding='utf-8') == txt
        print('README.md is up to date' if ok else 'README.md differs from nbs/index.ipynb: run `make readme`')
        sys.exit(0 if ok else 1)
    readme.write_text(txt, encoding='utf-8')
    print(f'wrote {readme}')
