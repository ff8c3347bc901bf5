"""Sphinx configuration for the silhouette_nb site, built offline by `docs/build.py`.

The sources Sphinx reads are staged by `build.py` in `docs/_build/src` (processed notebooks,
`index`, `running.md`); this file is passed with `-c docs`. Everything the browser loads is
served from the site itself: MathJax 3 (SVG output, no web fonts) is copied from the
`django-static-mathjax` wheel, and no theme feature that reaches a CDN is switched on.
"""
import tomllib
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
_meta = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']

project = 'silhouette_nb'
author = 'silhouette_nb developers'
copyright = 'silhouette_nb developers, Apache-2.0'
try:
    from silhouette_nb import __version__ as release
except Exception: release = ''
version = release

extensions = ['myst_nb', 'sphinx.ext.mathjax']
exclude_patterns = ['_build', '**.ipynb_checkpoints']
root_doc = 'index'
language = 'en'

# --- notebooks: rendered as saved by `nbdev-test --save`, never re-executed ---
nb_execution_mode = 'off'
nb_render_markdown_format = 'myst'   # show_doc output: headings, tables, math, raw anchors
nb_ipywidgets_js = {}                # no require.js / html-manager from a CDN
nb_merge_streams = True
nb_output_stderr = 'remove'
nb_number_source_lines = False
myst_enable_extensions = ['dollarmath', 'amsmath', 'colon_fence', 'attrs_inline', 'html_image', 'deflist']
myst_dmath_double_inline = True
myst_heading_anchors = 3
suppress_warnings = ['myst.header', 'misc.highlighting_failure', 'mystnb.unknown_mime_type']

# --- math: a local MathJax 3, SVG output (no font files to fetch) ---
mathjax_path = 'mathjax/tex-svg-full.js'
mathjax3_config = {'svg': {'fontCache': 'global'}, 'options': {'menuOptions': {'settings': {'enrich': False}}}}

# --- HTML ---
html_theme = 'sphinx_book_theme'
html_title = 'silhouette_nb'
html_static_path = ['_static', str(DOCS/'_build'/'static')]   # the latter: MathJax, staged by build.py
html_css_files = ['custom.css']
html_js_files = ['fit.js']        # tables and display equations wider than the column are scaled to fit
html_favicon = '_static/favicon.svg'
html_last_updated_fmt = None
html_copy_source = True
html_show_sourcelink = False
html_theme_options = {
    'home_page_in_toc': True,
    'show_toc_level': 2,
    'use_download_button': False,     # downloads are local, but the menu adds nothing offline
    'use_fullscreen_button': False,
    'use_repository_button': False,
    'use_issues_button': False,
    'use_edit_page_button': False,
    'launch_buttons': {},
    'navigation_with_keys': False,
    'search_bar_text': 'Search the docs…',
    'icon_links': [],
    'analytics': {},
    'extra_footer': f"<p>{_meta['description']}</p>",
}
html_context = {'default_mode': 'light'}

# --- code: each line of highlighted code in a span that knows its indentation, so that a long line
# wraps (custom.css) with its continuation indented past the line's own start, not back at column 0 ---
import re
from pygments.formatters import HtmlFormatter

class IndentedLines(HtmlFormatter):
    "Pygments' HTML, each source line in `<span class=\"code-line\" style=\"--indent: N\">`; the text is unchanged."
    def wrap(self, source):
        def lines():
            for is_line, html in source:
                if is_line:
                    body = html.rstrip('\n')
                    text = re.sub(r'<[^>]*>', '', body)
                    html = f'<span class="code-line" style="--indent: {len(text) - len(text.lstrip(" "))}">{body}</span>{html[len(body):]}'
                yield is_line, html
        return super().wrap(lines())

def _indented_lines(app):
    if getattr(app.builder, 'highlighter', None) is not None: app.builder.highlighter.formatter = IndentedLines

def setup(app):
    app.connect('builder-inited', _indented_lines)
