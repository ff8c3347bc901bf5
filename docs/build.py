"""Build the documentation site offline: nbdev processes the notebooks, Sphinx + myst-nb renders them.

    python docs/build.py            # -> docs/_build/html/index.html
    python docs/build.py --strict   # Sphinx warnings are errors

Steps, each one plain so that a reader can follow it:

1. **Process** `nbs/index.ipynb` and `nbs/[0-9]*.ipynb` (name order) with nbdev's own doc processors
   (`nbdev.processors.FilterDefaults`): front matter from `# Title` / `> summary`, `#| hide` cells and
   `#| hide_line` lines removed, a `show_doc` cell added after every exported function and class and
   executed (that is the API reference), housekeeping magics stripped. Two changes for a literate
   reference: exported cells keep their source (shown after the API entry they define; cells that only
   import are dropped), and back-ticked exported names link to their API entry.
2. **Stage** the processed notebooks under `docs/_build/src`, named after nbdev's `output-file`
   (`distances.ipynb` -> `distances.html`, as `nbdev-docs` names them), with the home page's table of
   contents and `running.md` (its "available yet?" column filled in from what exists now).
3. **Render** with Sphinx, myst-nb and sphinx-book-theme into `docs/_build/html`; the notebooks are not
   re-executed (`nb_execution_mode = "off"`): their saved outputs are shown.
4. **Self-contain**: MathJax 3 (SVG output: no web fonts) is copied from the `django-static-mathjax`
   wheel into `_static/mathjax`, its speech-engine CDN fallbacks pointed at the local copy;
   `external_refs` then fails the build if any page or stylesheet loads from another host, or any
   file names a CDN.

Environment: `DOCS_SKIP=05_data,...` leaves notebooks out (local use, while one is half-written).
Exported names, constants included, each get an API entry with an anchor named like nbdev's
(`distances.html#class_means`).
"""
import argparse, ast, json, os, re, shutil, sys, time, tomllib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
NBS = ROOT/'nbs'
LIB = ROOT/'silhouette_nb'
BUILD = DOCS/'_build'
SRC, HTML, STATIC = BUILD/'src', BUILD/'html', BUILD/'static'

# ---------------------------------------------------------------------------------------------
# 1. nbdev processing (runs in worker processes: each notebook's exported cells are executed)

_IMPORT_ONLY = (ast.Import, ast.ImportFrom)
_DROP_DIRS = {'hide', 'default_exp'}
_SRC_DIRS = {'export', 'exports', 'exporti'}

def _only_imports(src):
    try: tree = ast.parse(src)
    except SyntaxError: return False
    return bool(tree.body) and all(isinstance(o, _IMPORT_ONLY) for o in tree.body)

def _keep_export_source(cell):
    "In place of nbdev's `rm_export`: drop hidden cells, keep exported cells' source (not bare imports)."
    if cell.cell_type != 'code' or not cell.directives_: return
    d = cell.directives_.keys()
    if d & _DROP_DIRS: del cell['source']
    elif d & _SRC_DIRS:
        if _only_imports(cell.source): del cell['source']
        else: cell['exported_source'] = True

SKIP = set(filter(None, os.environ.get('DOCS_SKIP', '').split(',')))   # notebooks left out (local use)

def _value_entries(nb):
    "After nbdev's `add_show_docs`: an API entry for each exported constant (`NAME = ...`), which nbdev skips."
    from fastcore.nbio import mk_cell
    from fastcore.basics import AttrDict
    from nbdev.processors import _want_doc
    for cell in reversed([c for c in nb.cells if _want_doc(c)]):
        try: tree = ast.parse(cell.source)
        except SyntaxError: continue
        new = []
        for node in tree.body:
            tgts = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            for t in tgts:
                if isinstance(t, ast.Name) and not t.id.startswith('_'):
                    src = ast.get_source_segment(cell.source, node) or t.id
                    lines = src.splitlines()
                    if len(lines) > 12: lines = lines[:11] + ['    ...']
                    md = f"### {t.id}\n\n```python\n" + '\n'.join(lines) + "\n```\n"
                    c = mk_cell('#| echo: false')
                    c.outputs = [AttrDict(output_type='display_data', metadata={}, data=AttrDict({'text/markdown': md}))]
                    c.has_sd = True
                    new.append(c)
        nb.cells[cell.idx_+1:cell.idx_+1] = new

def notebook_pages(nbs=None):
    "Notebooks to render, in reading order: the home page first, then `[0-9]*.ipynb` by name."
    nbs = nbs or NBS
    pages = [p for p in sorted(nbs.glob('[0-9]*.ipynb')) if p.name not in SKIP and p.stem not in SKIP]
    if (nbs/'index.ipynb').exists(): pages.insert(0, nbs/'index.ipynb')
    return pages

def process_notebook(path):
    "Run nbdev's doc processors on the notebook at `path`; return (frontmatter, plain notebook dict)."
    os.chdir(ROOT)
    os.environ.setdefault('MPLBACKEND', 'Agg')
    from fastcore.nbio import read_nb
    from nbdev.process import NBProcessor
    from nbdev import processors as P
    skip = {'insert_warning', 'rm_export', 'add_links', 'add_fold', 'mv_exports'}
    procs = []
    for p in P.FilterDefaults().procs():
        name = getattr(p, '__name__', '')
        if name == 'rm_export': procs.append(_keep_export_source)
        if name not in skip: procs.append(p)
        if name == 'add_show_docs': procs.append(type('value_entries', (P.Processor,), {'begin': lambda self: _value_entries(self.nb)}))
    nb = read_nb(path)
    NBProcessor(nb=nb, procs=procs, rm_directives='quarto').process()
    fm = dict(getattr(nb, 'frontmatter_', {}) or {})
    cells = []
    for c in nb.cells:
        d = {'cell_type': c.cell_type, 'metadata': {}, 'source': c.source}
        if c.cell_type == 'code':
            d['outputs'] = [json.loads(json.dumps(o)) for o in c.get('outputs', [])]
            d['execution_count'] = None
            if c.get('has_sd'): d['metadata']['show_doc'] = True
            if c.get('exported_source'): d['metadata']['exported_source'] = True
        cells.append(d)
    return fm, {'cells': cells, 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}

# ---------------------------------------------------------------------------------------------
# 2. staging for Sphinx

_QUARTO_DIR = re.compile(r'^\s*#\|\s*([\w-]+)\s*:\s*(.*?)\s*$')

def _split_directives(src):
    "Quarto-style `#| key: value` lines nbdev leaves in, and the remaining source."
    lines, ds = src.splitlines(), {}
    while lines and (m := _QUARTO_DIR.match(lines[0])):
        ds[m.group(1)] = m.group(2).strip('"\''); lines.pop(0)
    return ds, '\n'.join(lines).strip('\n')

def module_pages(nbs=None):
    "{module name: (notebook, names in its `__all__`)} for every notebook with a `default_exp`."
    res = {}
    for nb in notebook_pages(nbs):
        src = '\n'.join(''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code')
        m = re.search(r'^\s*#\|\s*default_exp\s+(\S+)', src, re.MULTILINE)
        if not m: continue
        mod = m.group(1)
        py = LIB/(mod.replace('.', '/') + '.py')
        names = []
        if py.exists():
            for node in ast.parse(py.read_text()).body:
                if isinstance(node, ast.Assign) and any(getattr(t, 'id', '') == '__all__' for t in node.targets):
                    names = list(ast.literal_eval(node.value))
        res[mod] = (nb, names)
    return res

_TICKED = re.compile(r'`([A-Za-z_][\w.]*?)(\(\))?`')
_FENCE = re.compile(r'^\s*(```|~~~)')

def linkify(md, symbols, here):
    "Back-ticked exported names in markdown `md` -> links to their API entry (outside code fences and math)."
    def sub(m):
        nm = m.group(1)
        if nm not in symbols: return m.group(0)
        page = symbols[nm]
        href = f'#{nm}' if page == here else f'{page}.html#{nm}'
        return f'<a class="reference internal api-link" href="{href}"><code>{nm}{m.group(2) or ""}</code></a>'
    out, fenced, in_math = [], False, False
    for line in md.split('\n'):
        if _FENCE.match(line): fenced = not fenced
        if line.strip().startswith('$$') and line.strip().count('$$') == 1: in_math = not in_math
        out.append(line if fenced or in_math or line.startswith('    ') else _TICKED.sub(sub, line))
    return '\n'.join(out)

_SD_HEAD = re.compile(r'^(#{2,6})[ \t]+(\S+)[ \t]*$', re.MULTILINE)

def _api_anchor(md):
    "show_doc markdown: drop the leading rule (a docutils error inside a cell), anchor the heading like nbdev (`#class_means`)."
    md = re.sub(r'^\s*---\s*\n', '', md)
    return _SD_HEAD.sub(lambda m: f'<a id="{m.group(2)}" class="api-anchor"></a>\n\n{m.group(1)} {m.group(2)}', md, count=1)

def _entry_name(cell):
    "The name an API entry (a show_doc cell) documents."
    for o in cell.get('outputs', []):
        m = re.search(r'^#{2,6}[ \t]+(\S+)', o.get('data', {}).get('text/markdown', ''), re.MULTILINE)
        if m: return m.group(1)

def _page_summary(desc):
    """The notebook's `> summary` line as a rubric of class `page-summary`, in a colon fence: a backtick
    fence's info string may not hold a backtick (CommonMark), so a summary that quotes code (`DataLoaders`)
    would leave the fence as text and open an empty code block where it closes."""
    return f":::{{rubric}} {' '.join(str(desc).split())}\n:class: page-summary\n:::\n"

def stage_notebook(fm, nb, symbols, here):
    "Turn nbdev's output into what myst-nb reads: a title cell, tags for hidden input/output, linked names."
    cells = []
    for c in nb['cells']:
        if c['cell_type'] == 'raw':   # nbdev's front matter: the page title and summary
            if not fm.get('title'): continue
            md = f"# {fm['title']}\n"
            if fm.get('description'): md += '\n' + _page_summary(fm['description'])
            cells.append({'cell_type': 'markdown', 'metadata': {}, 'source': md}); continue
        if c['cell_type'] == 'markdown':
            if c['source'].startswith('<!-- WARNING'): continue
            c['source'] = linkify(c['source'], symbols, here)
            cells.append(c); continue
        ds, src = _split_directives(c['source'])
        if str(ds.get('include', '')).lower() == 'false': continue
        tags = []
        if str(ds.get('echo', '')).lower() == 'false': tags.append('remove-input')
        if str(ds.get('output', '')).lower() == 'false': tags.append('remove-output')
        if not src and not c.get('outputs'): continue
        if not src: src, tags = '# output only', tags + ['remove-input'] * ('remove-input' not in tags)   # myst-nb skips empty cells
        c['source'] = src
        for o in c.get('outputs', []):
            md = o.get('data', {}).get('text/markdown')
            if md is not None:
                md = ''.join(md) if isinstance(md, list) else md
                if c['metadata'].get('show_doc'): md = _api_anchor(md)
                o['data']['text/markdown'] = linkify(md, symbols, here)
                o['data'].pop('text/plain', None)
        if tags: c['metadata']['tags'] = tags
        cells.append(c)
    # An exported cell's source comes right after the API entries (show_doc cells) it defines, and those
    # entries in the order the names are defined (nbdev's `add_show_docs` inserts them in reverse).
    i = 0
    while i < len(cells):
        if cells[i]['metadata'].get('exported_source'):
            j = i + 1
            while j < len(cells) and cells[j]['metadata'].get('show_doc'): j += 1
            if j > i + 1:
                src = cells[i]['source']
                def pos(c):
                    nm = _entry_name(c)
                    m = nm and re.search(rf'^\s*(?:(?:async\s+)?def|class)\s+{re.escape(nm)}\b|^{re.escape(nm)}\s*[:=]', src, re.MULTILINE)
                    return m.start() if m else len(src)
                cells[i+1:j] = sorted(cells[i+1:j], key=pos)
                cells.insert(j - 1, cells.pop(i)); i = j
        i += 1
    for i, c in enumerate(cells):
        for k in ('show_doc', 'exported_source'): c['metadata'].pop(k, None)
        c['id'] = f'cell-{i}'
    nb = dict(nb, cells=cells)
    nb['metadata'] = {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'},
                      'language_info': {'name': 'python', 'pygments_lexer': 'ipython3'}}
    return nb

def _running_md():
    "docs/running.md with its `{{status}}` table filled in from what exists in the checkout now."
    mk = (ROOT/'Makefile').read_text() if (ROOT/'Makefile').exists() else ''
    proj = tomllib.loads((ROOT/'pyproject.toml').read_text()).get('project', {})
    scripts = proj.get('scripts', {})
    def target(t): return re.search(rf'^{re.escape(t)}\s*:', mk, re.MULTILINE) is not None
    rows = [('`make test`', target('test')), ('`make bench`', target('bench')),
            ('`make reproduce`', target('reproduce')), ('`make study`', target('study')),
            ('`make gpu-check`', target('gpu-check')), ('`make docs`', target('docs')),
            ('`silhouette-nb` command', 'silhouette-nb' in scripts)]
    table = '| command | available in this build |\n| --- | --- |\n' + '\n'.join(
        f'| {n} | {"yes" if ok else "**not yet** (planned)"} |' for n, ok in rows)
    return (DOCS/'running.md').read_text().replace('{{status}}', table)

def _index_page(stems, has_index_nb):
    toc = '\n```{toctree}\n:hidden:\n:maxdepth: 1\n\n' + '\n'.join(stems) + '\n```\n'
    if has_index_nb: return toc
    meta = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']
    return f"# silhouette_nb\n\n{meta['description']}.\n\n" + '\n'.join(f'- {{doc}}`{s}`' for s in stems) + '\n' + toc

MATHJAX_PARTS = ['tex-svg-full.js', 'a11y', 'ui', 'sre', 'output/svg', 'output/svg.js', 'input/tex', 'adaptors']

def stage_mathjax(dest=None):
    "Copy MathJax 3 (SVG output: no web fonts) from the `django-static-mathjax` wheel."
    dest = dest or STATIC/'mathjax'
    try: import mathjax
    except ImportError:
        sys.exit("docs/build.py: MathJax is missing: pip install django-static-mathjax (part of the docs extra)")
    from importlib.metadata import version
    es5, stamp = Path(mathjax.__file__).parent/'static'/'mathjax'/'es5', dest/'VERSION'
    if stamp.exists() and stamp.read_text() == version('django-static-mathjax'): return
    shutil.rmtree(dest, ignore_errors=True)
    for part in MATHJAX_PARTS:
        s, d = es5/part, dest/part
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_dir(): shutil.copytree(s, d)
        else: shutil.copy2(s, d)
    # The speech rule engine (used only when a reader turns speech on in MathJax's menu) fetches its
    # rule files from a CDN by default: point it at the copy shipped beside it (pages are all top-level).
    for js in dest.rglob('*.js'):
        text = js.read_text(encoding='utf-8')
        new = re.sub(r'"https://cdn\.jsdelivr\.net/npm/speech-rule-engine@"\+\w+\.VERSION\+"/lib/mathmaps"',
                     '"_static/mathjax/sre/mathmaps"', text)
        # Internet Explorer's fallbacks, never loaded by a current browser: no URL at all.
        new = re.sub(r'"https://cdn\.jsdelivr\.net/npm/wicked-good-xpath@[\w.]+/dist/wgxpath\.install\.js"', '""', new)
        new = re.sub(r'"https://cdn\.jsdelivr\.net/npm/sre-mathmaps-ie@"\+[\w.]+\+"mathmaps_ie\.js"', '""', new)
        if new != text: js.write_text(new, encoding='utf-8')
    stamp.write_text(version('django-static-mathjax'))

# ---------------------------------------------------------------------------------------------
# 4. no request may leave the site

_EXT_URL = re.compile(r'''(?:src|href|action)\s*=\s*["'](?:https?:)?//[^"']+|url\(\s*["']?(?:https?:)?//[^)"']+|@import\s+["'](?:https?:)?//[^"']+''', re.I)

_CDNS = re.compile(r'(?:cdn\.jsdelivr\.net|unpkg\.com|cdnjs\.cloudflare\.com|fonts\.googleapis\.com|fonts\.gstatic\.com|'
                   r'code\.jquery\.com|ajax\.googleapis\.com|cdn\.plot\.ly|cdn\.bokeh\.org|mathjax\.rstudio\.com)[^"\' )]*')

def external_refs(html_dir=None):
    "[(file, reference)] for every attribute or CSS url() in the site that would load from another host, and any CDN named in a script."
    bad, html_dir = [], html_dir or HTML
    for p in html_dir.rglob('*'):
        if p.suffix not in ('.html', '.css', '.js') or '_sources' in p.parts: continue
        text = p.read_text(errors='replace')
        bad += [(str(p.relative_to(html_dir)), m.group(0)) for m in _CDNS.finditer(text)]
        if p.suffix == '.js': continue
        for m in _EXT_URL.finditer(text):
            ref = m.group(0)
            if p.suffix == '.html' and re.match(r'href', ref, re.I):
                # plain <a href> links are navigation, not loads; <link href> loads (stylesheets, fonts, icons)
                start = text.rfind('<', 0, m.start())
                if not re.match(r'<link\b', text[start:m.start()], re.I): continue
                tag = text[start:text.find('>', m.start())]
                if re.search(r'rel\s*=\s*["\']?(canonical|alternate|author|license|me)', tag, re.I): continue
            bad.append((str(p.relative_to(html_dir)), ref))
    return bad

# ---------------------------------------------------------------------------------------------

def build(strict=False, jobs=2, quiet=True):
    t0 = time.time()
    pages = notebook_pages()
    if not pages: sys.exit('docs/build.py: no notebooks in nbs/')
    for d in (SRC, HTML): shutil.rmtree(d, ignore_errors=True)   # no page outlives its notebook
    SRC.mkdir(parents=True)
    stage_mathjax()
    # Workers get the function from an importable module: IPython (which nbdev runs the notebook's
    # code in) replaces a worker's `__main__`, so `__main__.process_notebook` is gone after one notebook.
    sys.path.insert(0, str(DOCS))
    import build as importable
    with ProcessPoolExecutor(max_workers=max(1, min(jobs, len(pages)))) as ex:
        futs = [ex.submit(importable.process_notebook, p) for p in pages]
        results, failed = [], []
        for p, f in zip(pages, futs):
            try: results.append(f.result())
            except Exception as e:
                failed.append(p.name)
                print(f'docs/build.py: nbdev could not process {p} (nbdev-docs fails the same way):'
                      f'\n{e}\n', file=sys.stderr)
    if failed:
        sys.exit(f"docs/build.py: failed to process {', '.join(failed)}. nbdev runs imports, exported cells and "
                 "show_doc to document a notebook: a cell that mixes an import with other code is run too, "
                 "so keep imports in their own cells. (DOCS_SKIP=name,... leaves notebooks out locally.)")
    t1 = time.time()
    page_of = {}
    for path, (fm, nb) in zip(pages, results):
        stem = Path(fm.get('output-file') or path.stem).stem   # nbdev's name: 01_silhouette -> silhouette
        if path.name == 'index.ipynb': stem = 'index'
        elif stem == 'index': stem = path.stem
        page_of[path] = stem
    mods = {m: (page_of[nb], names) for m, (nb, names) in module_pages().items() if nb in page_of}
    symbols = {nm: page for page, names in mods.values() for nm in names}
    stems = []
    for path, (fm, nb) in zip(pages, results):
        stem = page_of[path]
        (SRC/f'{stem}.ipynb').write_text(json.dumps(stage_notebook(fm, nb, symbols, stem), indent=1))
        if stem != 'index': stems.append(stem)
    (SRC/'running.md').write_text(_running_md())
    stems.append('running')
    has_index = (NBS/'index.ipynb').exists()
    if has_index:
        nb = json.loads((SRC/'index.ipynb').read_text())
        nb['cells'].append({'cell_type': 'markdown', 'id': 'cell-toc', 'metadata': {}, 'source': _index_page(stems, True)})
        (SRC/'index.ipynb').write_text(json.dumps(nb, indent=1))
    else: (SRC/'index.md').write_text(_index_page(stems, False))
    (SRC/'pages.json').write_text(json.dumps({'pages': ['index'] + stems, 'skipped': sorted(SKIP),
        'modules': {m: {'page': p, 'names': n} for m, (p, n) in mods.items()}}, indent=1))

    from sphinx.cmd.build import build_main
    args = ['-b', 'html', '-c', str(DOCS), '-j', str(jobs), str(SRC), str(HTML)]
    if quiet: args.insert(0, '-q')
    if strict: args[:0] = ['-W', '--keep-going']
    rc = build_main(args)
    if rc: sys.exit(f'docs/build.py: sphinx-build failed ({rc})')
    (HTML/'pages.json').unlink(missing_ok=True)
    bad = external_refs()
    if bad:
        for f, ref in bad[:30]: print(f'external reference in {f}: {ref}', file=sys.stderr)
        sys.exit(f'docs/build.py: {len(bad)} references to other hosts (the site must work offline)')
    shutil.copy(SRC/'pages.json', HTML/'pages.json')   # written last: the stamp of a complete build
    print(f'docs: {len(stems)+1} pages in {HTML} '
          f'(nbdev processing {t1-t0:.1f}s, sphinx {time.time()-t1:.1f}s)')
    return HTML

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--strict', action='store_true', help='treat Sphinx warnings as errors')
    ap.add_argument('-j', '--jobs', type=int, default=2, help='worker processes (notebooks, Sphinx)')
    ap.add_argument('-v', '--verbose', action='store_true', help="show Sphinx's progress")
    a = ap.parse_args()
    build(a.strict, a.jobs, quiet=not a.verbose)
