"""Render `nbs/index.ipynb` to GitHub-flavoured markdown for README.md, offline (no Quarto).

    python tools/readme.py            # write README.md
    python tools/readme.py --check    # exit 1 when README.md is out of date
    python tools/readme.py --run      # first run the notebook's code cells and store what they show, then write README.md

Rules, following what `nbdev-readme` produces: markdown cells verbatim; code cells fenced as
python with their `#|` directives removed; cells marked `#| hide` (or `#| include: false`)
left out; `#| echo: false` keeps the output only; text outputs fenced, markdown outputs verbatim.

What a code cell shows is what Jupyter shows of it: the value of its last line when that is an expression, as
IPython prints it (`run_cells`). `--run` stores exactly that in the notebook, so the README's outputs are made by the
code; tests/test_readme.py runs the README's `## Use` blocks again and compares (`same_output`, numbers to `ABS_TOL` or `REL_TOL`).
"""
import ast, contextlib, io, json, math, re, sys
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

def run_cells(sources):
    """Run code `sources` in order in one namespace, as a notebook does; for each, what Jupyter shows of it: the
    IPython text of its last line's value when that line is an expression (else None). Printed text is not kept
    (fastai's progress bars print); `#|` directives are comments to Python."""
    from IPython.lib.pretty import pretty
    ns, shown = {'__name__': '__main__'}, []
    for src in sources:
        tree = ast.parse(src)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(tree, '<readme>', 'exec'), ns)
            value = eval(compile(ast.Expression(last.value), '<readme>', 'eval'), ns) if last else None
        shown.append(None if value is None else pretty(value, max_width=79))
    return shown

NUMBER = re.compile(r'[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?')
# The README's training does not repeat exactly between processes on this CPU (three runs of the same seed measured:
# `evaluate`'s loss 0.472, 0.479, 0.489; silhouette 0.562-0.575; top-1 0.978-0.981): numbers may differ by this
# much, the text around them (the keys, `grad_fn`, the shapes) not at all.
ABS_TOL = 0.03
REL_TOL = 0.03   # and by 3 % of themselves: the effective rank (about 44) moved by 0.8 % between two runs

def same_output(shown:str, printed:str, abs_tol:float=ABS_TOL, rel_tol:float=REL_TOL)->str|None:
    "None when `printed` is `shown` up to numbers within `abs_tol` or `rel_tol` of themselves (integers exactly); else what differs."
    if NUMBER.sub('#', shown) != NUMBER.sub('#', printed): return f'the text differs:\n{shown}\n---\n{printed}'
    for a, b in zip(NUMBER.findall(shown), NUMBER.findall(printed)):
        if re.fullmatch(r'[-+]?\d+', a) and re.fullmatch(r'[-+]?\d+', b):
            if int(a) != int(b): return f'{a} shown, {b} printed'
        elif not math.isclose(float(a), float(b), abs_tol=abs_tol, rel_tol=rel_tol): return f'{a} shown, {b} printed (beyond {abs_tol} and {rel_tol:.0%})'
    return None

def section_blocks(md:str, heading:str='## Use')->list:
    "[(python source, the plain block right after it or None)] of the section of markdown `md` under `heading`."
    body = md.split('\n' + heading + '\n', 1)[1]
    body = re.split(r'\n## ', body, 1)[0]
    blocks = re.findall(r'^```(\w*)\n(.*?)\n```$', body, re.MULTILINE | re.DOTALL)
    return [(src, blocks[i + 1][1] if i + 1 < len(blocks) and blocks[i + 1][0] == '' else None)
            for i, (lang, src) in enumerate(blocks) if lang == 'python']

def run_notebook(nb_path=ROOT/'nbs'/'index.ipynb'):
    "Run the notebook's code cells (`run_cells`) and store what each shows as its only output."
    nb = json.loads(Path(nb_path).read_text(encoding='utf-8'))
    code = [c for c in nb['cells'] if c['cell_type'] == 'code']
    for c, out in zip(code, run_cells([_src(c) for c in code])):
        c['outputs'] = [] if out is None else [{'data': {'text/plain': out.splitlines(keepends=True)},
                                                'execution_count': None, 'metadata': {}, 'output_type': 'execute_result'}]
    Path(nb_path).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')

if __name__ == '__main__':
    if '--run' in sys.argv: run_notebook(); print('ran nbs/index.ipynb and stored its outputs (run nbdev-clean)')
    txt, readme = render(), ROOT/'README.md'
    if '--check' in sys.argv:
        ok = readme.exists() and readme.read_text(encoding='utf-8') == txt
        print('README.md is up to date' if ok else 'README.md differs from nbs/index.ipynb: run `make readme`')
        sys.exit(0 if ok else 1)
    readme.write_text(txt, encoding='utf-8')
    print(f'wrote {readme}')
