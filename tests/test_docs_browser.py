"""The rendered docs site, opened page by page in headless Chromium with the network cut off.

The site is built by `docs/build.py` (reused when `docs/_build/html` is newer than every source), served
from 127.0.0.1 on a free port, and crawled once; each test below checks one property of that crawl:
no console errors, every image loaded, every internal link (and anchor) resolves, math typeset by the
local MathJax, an API entry for every name in each module's `__all__`, no request for another host,
search finds pages, and every page renders what its notebook says (`rendering_problems`: no MyST or
Markdown syntax shown as text, no empty code block, no code cut off; source code wraps; inline code stays
inline; no table or display equation wider than its column). Small hand-made
pages check that `rendering_problems` sees each of those. Screenshots of the home and silhouette pages go
to `docs/_build/screenshots/`.

Chromium comes from Debian (`apt-get install chromium chromium-driver`). Without it the tests skip,
except under CI (`CI=true`), where they fail.
"""
import ast, functools, http.server, itertools, json, os, re, shutil, socket, subprocess, sys, tempfile, threading, time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote, urljoin, urlsplit
from urllib.request import urlopen
from urllib.error import HTTPError

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS, NBS, LIB = ROOT/'docs', ROOT/'nbs', ROOT/'silhouette_nb'
HTML = DOCS/'_build'/'html'
SHOTS = DOCS/'_build'/'screenshots'
CHROMIUM = next((p for p in map(shutil.which, ['chromium', 'chromium-browser']) if p), None)
CHROMEDRIVER = shutil.which('chromedriver')
IN_CI = os.environ.get('CI', '').lower() in ('1', 'true', 'yes')
SKIPPED_NBS = set(filter(None, os.environ.get('DOCS_SKIP', '').split(',')))   # same switch as docs/build.py
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-quic', '--disable-dev-shm-usage',
         '--disable-extensions', '--disable-default-apps', '--no-default-browser-check', '--mute-audio',
         '--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication,NetworkTimeServiceQuerying',
         # Nothing but 127.0.0.1 resolves, and anything not on loopback goes to a proxy port that refuses.
         '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
         '--proxy-server=http://127.0.0.1:9', '--window-size=1280,1000']

def _need_browser():
    missing = [n for n, p in [('chromium', CHROMIUM), ('chromedriver', CHROMEDRIVER)] if not p]
    try: import selenium  # noqa: F401
    except ImportError: missing.append('selenium (pip)')
    if not missing: return
    msg = (f"docs browser test needs {', '.join(missing)}: apt-get install -y chromium chromium-driver "
           "(as root; `make browser` does it) and pip install selenium (the dev extra)")
    if IN_CI: pytest.fail(msg, pytrace=False)
    pytest.skip(msg)

# ---------------------------------------------------------------------------------------------
# the site: fresh build, served on loopback

def _sources():
    yield from NBS.glob('*.ipynb')
    yield from LIB.glob('*.py')
    yield from (p for p in DOCS.rglob('*') if p.is_file() and '_build' not in p.parts)
    yield ROOT/'pyproject.toml'

def _fresh():
    stamp = HTML/'pages.json'
    if not stamp.exists(): return False
    if set(json.loads(stamp.read_text()).get('skipped', [])) != SKIPPED_NBS: return False
    t = stamp.stat().st_mtime
    return all(p.stat().st_mtime < t for p in _sources())

class _Quiet(http.server.SimpleHTTPRequestHandler):
    log = []
    def log_message(self, fmt, *args): pass
    def log_request(self, code='-', size='-'):
        type(self).log.append((self.path, int(code) if str(code).isdigit() else code))
    def end_headers(self):
        self.send_header('Cache-Control', 'no-store')
        super().end_headers()

class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    def handle_error(self, request, client_address):   # the browser cancelling a request is no error
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)): super().handle_error(request, client_address)

@pytest.fixture(scope='module')
def site():
    _need_browser()
    if not (_fresh() or (os.environ.get('DOCS_REUSE') and (HTML/'pages.json').exists())):   # DOCS_REUSE=1: test as built
        t = time.time()
        r = subprocess.run([sys.executable, str(DOCS/'build.py')], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, f'docs/build.py failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}'
        print(f'docs built in {time.time()-t:.1f}s')
    handler = functools.partial(_Quiet, directory=str(HTML))
    srv = _Server(('127.0.0.1', 0), handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True); th.start()
    try: yield f'http://127.0.0.1:{srv.server_address[1]}/', json.loads((HTML/'pages.json').read_text())
    finally: srv.shutdown(); srv.server_close()

# ---------------------------------------------------------------------------------------------
# one crawl of every page

_MATHJAX_READY = """
const done = arguments[arguments.length - 1];
const t0 = Date.now();
(function wait() {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    MathJax.startup.promise.then(() => done(true), e => done('MathJax failed: ' + e));
  } else if (!document.querySelector('.math')) { done(true); }
  else if (Date.now() - t0 > 20000) { done('MathJax never started'); }
  else setTimeout(wait, 50);
})();"""

_PAGE_FACTS = """
const imgs = [...document.images];
return {
  title: document.title,
  bad_images: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.currentSrc || i.src),
  n_images: imgs.length,
  hrefs: [...document.querySelectorAll('a[href], link[href]')].map(a => a.href),
  srcs: [...document.querySelectorAll('script[src], img[src]')].map(s => s.src),
  n_math: document.querySelectorAll('.math').length,
  n_mjx: document.querySelectorAll('mjx-container').length,
  mjx_errors: [...document.querySelectorAll('mjx-container [data-mml-node="merror"], mjx-container [data-mjx-error], ' +
                                   'mjx-container [data-mml-node="mtext"][fill="red"]')]
                .map(e => e.closest('mjx-container').textContent.slice(0, 80)),
  raw_tex: [...document.querySelectorAll('.math')].filter(m => !m.querySelector('mjx-container'))
                .map(m => m.textContent.slice(0, 80)),
  ids: [...document.querySelectorAll('[id]')].map(e => e.id),
  text: document.body.innerText,
};"""

def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS: opts.add_argument(f)
    profile = tempfile.mkdtemp(prefix='docs-chromium-')
    opts.add_argument(f'--user-data-dir={profile}')
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL', 'performance': 'ALL'})
    d = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    d.profile_dir = profile
    d.set_page_load_timeout(180); d.set_script_timeout(60)   # generous: the test machine may be loaded
    # Chromium's own start-up (its new-tab page tries a remote page first, refused by the proxy) is not
    # the site's doing: start from a blank page and drop what the logs hold so far.
    d.get('about:blank'); time.sleep(0.5)
    d.get_log('performance'); d.get_log('browser')
    return d

def _requests(perf_log, reqs, out, page):
    "Collect the url of every network request and (url, status or failure, page) of every outcome."
    for e in perf_log:
        m = json.loads(e['message'])['message']
        p = m.get('params', {})
        if m['method'] == 'Network.requestWillBeSent': reqs[p['requestId']] = p['request']['url']
        elif m['method'] == 'Network.responseReceived': out.append((p['response']['url'], p['response']['status'], page))
        elif m['method'] == 'Network.loadingFailed' and not p.get('canceled'):
            out.append((reqs.get(p['requestId'], '?'), p.get('errorText', 'failed'), page, p))

def _full_screenshot(d, path, max_h=7000):
    h = min(d.execute_script('return document.documentElement.scrollHeight'), max_h)
    d.execute_cdp_cmd('Emulation.setDeviceMetricsOverride', {'width': 1280, 'height': h, 'deviceScaleFactor': 1, 'mobile': False})
    time.sleep(0.3)
    path.write_bytes(d.get_screenshot_as_png())
    d.execute_cdp_cmd('Emulation.clearDeviceMetricsOverride', {})

# ---------------------------------------------------------------------------------------------
# what a reader sees: no markup left as text, no code cut off (checked on every page of the crawl)

# MyST or Markdown syntax that, seen as text outside code, means the page shows a notebook's source,
# not what it says: (what it is, pattern).
LEAKS = [('a code fence', r'```|~~~|:::'),
         ('a MyST directive or role', r'(?<![\w^_\\])\{[a-z][\w.:-]*\}'),
         ('TeX (math not typeset)', r'\\[a-zA-Z]{2,}|\$(?=[^\s\d$])'),
         ('a directive option or role', r'(?<![\w:]):[a-z][\w-]*:(?=[\s`]|$)'),
         ('display math delimiters', r'\$\$'),
         ('a Markdown link', r'\[[^\]\n]+\]\([^)\s]+\)'),
         ('a Markdown heading', r'^\s*#{1,6}[ \t]+\S'),
         ('Markdown emphasis', r'\*\*\S(?:[^*\n]*\S)?\*\*')]

def leaked_markup(texts):
    "[(what, text, excerpt around it)] for each piece of `texts` (visible text outside code) holding one of `LEAKS`."
    res = []
    for t in texts:
        for what, pat in LEAKS:
            if m := re.search(pat, t, re.MULTILINE):
                res.append((what, t, ' '.join(t[max(0, m.start() - 50):m.end() + 50].split())))
    return res

_RENDERING = """
const visible = e => e.checkVisibility ? e.checkVisibility({visibilityProperty: true})
                                       : !!(e.offsetWidth || e.offsetHeight || e.getClientRects().length);
const where = e => { const p = [];
  for (; e && e !== document.body && p.length < 4; e = e.parentElement)
    p.unshift(e.tagName.toLowerCase() + (typeof e.className === 'string' && e.className.trim()
              ? '.' + e.className.trim().split(/\\s+/).join('.') : ''));
  return p.join(' > '); };
// visible text outside code, one text node at a time (code shows source on purpose; MathJax owns .math)
const prose = [];
const tw = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
while (tw.nextNode()) {
  const n = tw.currentNode, el = n.parentElement;
  if (!el || !n.nodeValue.trim() || !visible(el) ||
      el.closest('pre, code, kbd, samp, script, style, noscript, textarea, template, .math, mjx-container')) continue;
  prose.push([n.nodeValue, where(el)]);
}
// code blocks: content overflowing a box that hides it (not scrollable) is cut off. Follow each block's
// content out through its ancestors: a scrolling box keeps what overflows it reachable, a hiding one loses it.
const hides = v => v === 'hidden' || v === 'clip', scrolls = v => v === 'auto' || v === 'scroll';
const AXES = [['right', 'left', 'Width', 'Left', 'overflowX'], ['bottom', 'top', 'Height', 'Top', 'overflowY']];
function cutOffBy(pre) {
  for (const [far, near, Size, Side, ov] of AXES) {
    const s = getComputedStyle(pre)[ov], r = pre.getBoundingClientRect();
    if (pre['scroll' + Size] > pre['client' + Size] + 1 && hides(s)) return [pre, far];
    let end = scrolls(s) ? r[far] : Math.max(r[far], r[near] + pre['client' + Side] + pre['scroll' + Size]);
    for (let a = pre.parentElement; a && a !== document.body && a !== document.documentElement; a = a.parentElement) {
      const ra = a.getBoundingClientRect(), v = getComputedStyle(a)[ov];
      if (end <= ra[near] + a['client' + Side] + a['client' + Size] + 1) continue;
      if (hides(v)) return [a, far];
      if (scrolls(v)) end = ra[far];
    }
    // the window scrolls to the rest, unless the page hides its overflow (html's, or body's passed up to it)
    const root = getComputedStyle(document.documentElement)[ov];
    const page = root === 'visible' ? getComputedStyle(document.body)[ov] : root;
    if (hides(page) && end > document.documentElement['client' + Size] + 1) return [document.documentElement, far];
  }
  return null;
}
const code = [];
for (const pre of document.querySelectorAll('pre')) {
  if (!visible(pre)) continue;
  const text = pre.textContent.trim().split('\\n')[0].slice(0, 60);
  if (!text) { code.push(['an empty code block', where(pre), '']); continue; }
  const cut = cutOffBy(pre);
  if (cut) code.push([`code cut off at the ${cut[1]} (hidden by ${cut[0] === pre ? 'the block itself' : where(cut[0])})`,
                      where(pre), text]);
  // source code wraps (custom.css); only outputs (columns of numbers, logs) may scroll sideways
  else if (!pre.closest('.output') && pre.scrollWidth > pre.clientWidth + 1)
    code.push([`source code running ${pre.scrollWidth - pre.clientWidth}px past the right edge (it should wrap)`,
               where(pre), text]);
}
// inline code laid out as a block: the theme's `p.rubric{display:flex;flex-direction:column}` made each code span of a
// page summary (a rubric) a full-width line of its own
const blocks = [];
for (const c of document.querySelectorAll('code')) {
  if (c.closest('pre') || !visible(c) || getComputedStyle(c).display.startsWith('inline')) continue;
  blocks.push([`inline code laid out as a block (display: ${getComputedStyle(c).display})`, where(c), c.textContent.trim().slice(0, 40)]);
}
// a table or a display equation wider than its column: what does not fit is behind a scrollbar (or cut off), out of
// sight. Its box is itself when it is a block (an output table, MathJax's container), else its parent.
const wide = [];
for (const el of document.querySelectorAll('table, mjx-container[display="true"]')) {
  if (!visible(el) || el.closest('.bd-sidebar-primary, .bd-sidebar-secondary, .bd-header, .bd-footer')) continue;
  const box = getComputedStyle(el).display === 'block' ? el : el.parentElement;
  if (el.scrollWidth > box.clientWidth + 1)
    wide.push([`${el.tagName === 'TABLE' ? 'a table' : 'a display equation'} ${el.scrollWidth - box.clientWidth}px wider than its column ` +
               `(${el.scrollWidth}px in ${box.clientWidth}px)`, where(el), el.textContent.trim().replace(/\\s+/g, ' ').slice(0, 40)]);
}
return {prose, code: code.concat(blocks, wide)};
"""

def rendering_problems(d):
    """What a reader of the page open in driver `d` would see wrong, one line each: MyST or Markdown syntax
    left as text outside code (`LEAKS`), an empty code block, code cut off (it overflows a box that hides
    it: it can be neither seen nor scrolled to), source code that scrolls sideways instead of wrapping,
    inline code laid out as a block, or a table or display equation wider than its column."""
    r = d.execute_script(_RENDERING)
    where = {t: w for t, w in r['prose']}
    return ([f'{what} shown as text in {where[t]}: {x!r}' for what, t, x in leaked_markup(list(where))] +
            [f'{what} in {w}' + (f': {t!r}' if t else '') for what, w, t in r['code']])

@pytest.fixture(scope='module')
def crawl(site):
    base, meta = site
    pages = sorted(p.name for p in HTML.glob('*.html'))
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob('*.png'): old.unlink()
    d = _driver()
    res = {'pages': {}, 'requests': {}, 'responses': [], 'search': None}
    try:
        for name in pages:
            d.get(base + name)
            ready = d.execute_async_script(_MATHJAX_READY)
            # images that load lazily load once scrolled to
            d.execute_script("document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; i.scrollIntoView(); });")
            d.execute_async_script("""const done = arguments[arguments.length-1];
                Promise.all([...document.images].map(i => i.complete ? 0 : new Promise(r => { i.onload = i.onerror = r; })))
                  .then(() => done(0));""")
            facts = d.execute_script(_PAGE_FACTS)
            facts['mathjax'] = ready
            facts['rendering'] = rendering_problems(d)
            facts['console'] = [e for e in d.get_log('browser') if e['level'] in ('SEVERE', 'ERROR')]
            res['pages'][name] = facts
            _requests(d.get_log('performance'), res['requests'], res['responses'], name)
            if name in ('index.html', 'silhouette.html'):
                d.execute_script('window.scrollTo(0, 0)')
                d.save_screenshot(str(SHOTS/f'{Path(name).stem}.png'))
                _full_screenshot(d, SHOTS/f'{Path(name).stem}-full.png')
        d.get(base + 'search.html?q=silhouette')
        t0 = time.time()
        while time.time() - t0 < 20:
            found = d.execute_script("return [...document.querySelectorAll('#search-results li a')].map(a => a.href)")
            if found: break
            time.sleep(0.2)
        res['search'] = found
        res['search_console'] = [e for e in d.get_log('browser') if e['level'] in ('SEVERE', 'ERROR')]
        _requests(d.get_log('performance'), res['requests'], res['responses'], 'search.html')
        res['requests'] = list(res['requests'].values())
    finally:
        d.quit(); shutil.rmtree(d.profile_dir, ignore_errors=True)
    res['server_log'] = list(_Quiet.log)
    return base, meta, res

# ---------------------------------------------------------------------------------------------
# the checks

def test_pages_in_reading_order(crawl):
    base, meta, res = crawl
    nbs = sorted(p for p in NBS.glob('[0-9]*.ipynb') if p.name not in SKIPPED_NBS and p.stem not in SKIPPED_NBS)
    assert len(meta['pages']) == len(nbs) + 2, (meta['pages'], nbs)   # + home, + running
    for page in meta['pages']: assert f'{page}.html' in res['pages'], f'{page}.html was not built'
    if (NBS/'20_results.ipynb').exists(): assert 'results.html' in res['pages']
    # the sidebar of the home page links every page, in the order of the notebooks' names
    home = [urlsplit(h).path.lstrip('/') for h in res['pages']['index.html']['hrefs']]
    order = [home.index(f'{p}.html') for p in meta['pages'][1:]]
    assert order == sorted(order), meta['pages']

def test_no_console_errors(crawl):
    _, _, res = crawl
    errs = {p: [e['message'] for e in f['console']] for p, f in res['pages'].items() if f['console']}
    if res['search_console']: errs['search.html?q='] = [e['message'] for e in res['search_console']]
    assert not errs, errs

def test_every_image_loaded(crawl):
    _, _, res = crawl
    bad = {p: f['bad_images'] for p, f in res['pages'].items() if f['bad_images']}
    assert not bad, bad
    assert sum(f['n_images'] for f in res['pages'].values()) > 0 or not any(
        'image/png' in (NBS/p).read_text() for p in os.listdir(NBS) if p.endswith('.ipynb')), 'no plot made it to the site'

class _Ids(HTMLParser):
    def __init__(self): super().__init__(); self.ids = set()
    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ('id', 'name') and v: self.ids.add(v)

def test_internal_links_resolve(crawl):
    base, _, res = crawl
    host = urlsplit(base).netloc
    status, ids, bad = {}, {}, []
    for page, f in res['pages'].items():
        for url in f['hrefs'] + f['srcs']:
            u = urlsplit(url)
            if u.scheme not in ('http', 'https') or u.netloc != host: continue
            target = u._replace(fragment='').geturl()
            if target not in status:
                try:
                    with urlopen(target, timeout=10) as r:
                        status[target] = r.status
                        if r.headers.get_content_type() == 'text/html':
                            p = _Ids(); p.feed(r.read().decode('utf-8', 'replace')); ids[target] = p.ids
                except HTTPError as e: status[target] = e.code
            if status[target] != 200: bad.append(f'{page}: {url} -> HTTP {status[target]}')
            elif u.fragment and target in ids and unquote(u.fragment) not in ids[target]:
                bad.append(f'{page}: {url} -> no element with id {unquote(u.fragment)!r}')
    assert not bad, '\n'.join(bad)
    assert len(status) > 10

def test_math_typeset(crawl):
    _, _, res = crawl
    with_math = {p: f for p, f in res['pages'].items() if f['n_math']}
    assert with_math, 'no page has math: the derivations should'
    for p, f in with_math.items():
        assert f['mathjax'] is True, f'{p}: {f["mathjax"]}'
        assert f['n_mjx'] >= f['n_math'], f"{p}: {f['n_math']} formulas, {f['n_mjx']} typeset"
        assert not f['raw_tex'], f'{p}: formulas left as TeX: {f["raw_tex"][:5]}'
        assert not f['mjx_errors'], f'{p}: MathJax errors in {f["mjx_errors"][:5]}'

def _modules():
    "{module: (page file, __all__)} from the generated library itself, for notebooks that were built."
    res = {}
    for py in sorted(LIB.glob('*.py')):
        if py.name.startswith('_'): continue
        src = py.read_text()
        m = re.search(r'File to edit: \.\./nbs/(\S+?\.ipynb)', src)
        if m and (m.group(1) in SKIPPED_NBS or Path(m.group(1)).stem in SKIPPED_NBS): continue
        names = next((ast.literal_eval(n.value) for n in ast.parse(src).body if isinstance(n, ast.Assign)
                      and any(getattr(t, 'id', '') == '__all__' for t in n.targets)), [])
        # nbdev names a notebook's page after the notebook, less its number: 01_silhouette -> silhouette.html, 07a_pml -> pml.html
        if names and m: res[py.stem] = (re.sub(r'^\d+[a-z]*_', '', Path(m.group(1)).stem) + '.html', names)
    return res

def test_api_reference_lists_every_exported_name(crawl):
    _, _, res = crawl
    mods = _modules()
    assert 'distances' in mods
    missing = {}
    for mod, (page, names) in mods.items():
        f = res['pages'].get(page)
        assert f is not None, f'silhouette_nb.{mod} has no page {page}'
        ids = set(f['ids'])
        miss = [n for n in names if n not in ids or n not in f['text']]
        if miss: missing[page] = miss
    assert not missing, f'exported names without an API entry: {missing}'

def test_no_request_leaves_loopback(crawl):
    base, _, res = crawl
    host = urlsplit(base).hostname
    assert res['requests'], 'the performance log recorded no requests'
    away = [u for u in res['requests'] if urlsplit(u).scheme not in ('data', 'blob', 'about', 'chrome')
            and urlsplit(u).hostname != host]
    assert not away, away
    failed = [r for r in res['responses'] if not (isinstance(r[1], int) and r[1] < 400)]
    assert not failed, failed
    assert not [r for r in res['server_log'] if r[1] != 200 and r[1] != 304], res['server_log']

def test_search_finds_pages(crawl):
    _, _, res = crawl
    assert res['search'], 'searching "silhouette" found nothing'

def test_screenshots_saved(crawl):
    assert (SHOTS/'index.png').stat().st_size > 10_000
    if (NBS/'01_silhouette.ipynb').exists() and '01_silhouette' not in SKIPPED_NBS:
        assert (SHOTS/'silhouette.png').stat().st_size > 10_000

def test_quarto_config_is_nbdevs():
    "`nbdev-docs` keeps working where Quarto is installed: nbs/nbdev.yml is what nbdev would write now."
    from nbdev.config import get_config
    from nbdev.quarto import _nbdev_yml
    cwd = os.getcwd(); os.chdir(ROOT)
    try:
        cfg = get_config()
        vals = {k: cfg[k] for k in ['title', 'description', 'branch', 'git_url', 'doc_host', 'doc_baseurl']}
        vals['doc_path'] = cfg.doc_path.name
    finally: os.chdir(cwd)
    assert (NBS/'nbdev.yml').read_text() == _nbdev_yml.format(**vals), \
        'nbs/nbdev.yml is stale: python -c "from nbdev.quarto import refresh_quarto_yml; refresh_quarto_yml()"'
    import yaml
    q = yaml.safe_load((NBS/'_quarto.yml').read_text())
    assert q['project']['type'] == 'website' and 'nbdev.yml' in q['metadata-files']
    for css in [q['format']['html'].get('css')] if q['format']['html'].get('css') else []:
        assert (NBS/css).exists(), f'nbs/_quarto.yml names {css}, which is missing'

def test_pages_name_only_notebooks_that_exist(crawl):
    "A notebook named on a page (`07_experiments`, `16_cli`) is one of nbs/: no page points to one renamed or removed."
    _, _, res = crawl
    have = {p.stem for p in NBS.glob('*.ipynb')}
    bad = {p: sorted(set(m) - have) for p, f in res['pages'].items()
           if (m := re.findall(r'(?<![\w./-])(\d{2}[a-z]?_[a-z][a-z0-9_]*)(?![\w-])', f['text'])) and set(m) - have}
    assert not bad, f'pages name notebooks that nbs/ does not have: {bad}'

def test_running_page_explains_every_make_target(crawl):
    "Each target the Makefile's header lists (`#   make study  ...`) is explained on the running page."
    _, _, res = crawl
    header = '\n'.join(itertools.takewhile(lambda l: l.startswith('#'), (ROOT/'Makefile').read_text().splitlines()))
    targets = re.findall(r'^#\s+make ([\w-]+)', header, re.MULTILINE)
    assert {'test', 'reproduce', 'study', 'gpu-check'} <= set(targets), targets
    text = res['pages']['running.html']['text']
    missing = [t for t in targets if f'make {t}' not in text]
    assert not missing, f'running.md does not explain: {", ".join("make " + t for t in missing)}'

# ---------------------------------------------------------------------------------------------
# the rendering check, on every page of the site and on small pages made to fail it

def test_pages_render_what_the_notebooks_say(crawl):
    "No page shows MyST/Markdown syntax as text, an empty code block, or code cut off or scrolling sideways."
    _, _, res = crawl
    bad = {p: f['rendering'] for p, f in res['pages'].items() if f['rendering']}
    assert not bad, '\n'.join(f'{p}: {x}' for p, xs in bad.items()
                               for x in xs[:8] + ([f'... and {len(xs) - 8} more'] if len(xs) > 8 else []))

@pytest.fixture(scope='module')
def browser():
    "A browser for hand-made pages (after the crawl, whose own browser is closed by then)."
    _need_browser()
    d = _driver()
    try: yield d
    finally: d.quit(); shutil.rmtree(d.profile_dir, ignore_errors=True)

def _problems_of(d, html):
    d.get('data:text/html;charset=utf-8,' + quote(f'<!doctype html><html><body>{html}</body></html>'))
    return rendering_problems(d)

def test_rendering_check_sees_leaked_markup(browser):
    "The page summary as it rendered on the data page before the fix: the directive left as text, then an empty code block."
    leaked = _problems_of(browser, """<article><h1>Data</h1>
        <p>```{rubric} fastai <code>DataLoaders</code> for Fashion-MNIST and digits
        :class: page-summary</p>
        <div class="highlight-default"><div class="highlight"><pre><span></span>
        </pre></div></div>
        <p>and formulas left as $$ x^2 $$ and, cut by a list, $S_{ik} = 2\\gamma</p>
        <pre class="source">md = "```{rubric} quoted\\n:class: in code, $$ fine $$\\n```"</pre></article>""")
    print('\n'.join(leaked))
    assert any('MyST directive' in x and '{rubric}' in x for x in leaked), leaked
    assert any('code fence' in x for x in leaked) and any('directive option' in x and ':class:' in x for x in leaked), leaked
    assert any('display math' in x for x in leaked) and any('an empty code block' in x for x in leaked), leaked
    assert any('TeX' in x and 'S_{ik}' in x for x in leaked), leaked
    assert not [x for x in leaked if 'source' in x or 'quoted' in x], 'code may show markup: it is source'
    rendered = _problems_of(browser, """<article><h1>Data</h1>
        <p class="page-summary rubric">fastai <code>DataLoaders</code> for Fashion-MNIST and digits</p>
        <p>Math, links, headings: <span class="math">\\(x^2\\)</span>, <a href="#a">a link</a>.</p></article>""")
    assert rendered == [], rendered

def test_rendering_check_sees_code_cut_off(browser):
    "Code overflowing a box that hides it is cut off; overflow that scrolls (outputs) or wraps is readable."
    found = _problems_of(browser, """<style>body { font: 14px monospace; } .col { width: 320px; }
          pre { white-space: pre; overflow: visible; margin: 0 0 1em; }</style><div class="col">
        <div class="cell_input" style="overflow: hidden"><div class="highlight"><pre class="cut-by-cell">
def f(x): return a_function_with_a_long_name(x, another_argument, yet_another_argument)</pre></div></div>
        <div class="highlight"><pre class="cut-by-itself" style="overflow-x: hidden">
def f(x): return a_function_with_a_long_name(x, another_argument, yet_another_argument)</pre></div>
        <div style="max-height: 3em; overflow: hidden"><pre class="cut-at-bottom">a = 1\nb = 2\nc = 3\nd = 4\ne = 5</pre></div>
        <div class="cell_output"><div class="output"><pre class="output-scrolls" style="overflow: auto">
epoch     train_loss  valid_loss  ce        sil       accuracy  silhouette  time</pre></div></div>
        <div class="highlight"><pre class="source-wraps" style="white-space: pre-wrap">
def f(x): return a_function_with_a_long_name(x, another_argument, yet_another_argument)</pre></div>
        <div class="highlight"><pre class="source-scrolls" style="overflow: auto">
def f(x): return a_function_with_a_long_name(x, another_argument, yet_another_argument)</pre></div></div>""")
    print('\n'.join(found))
    def about(cls): return [x for x in found if f'pre.{cls}' in x]
    assert about('cut-by-cell') and 'cut off at the right (hidden by div.col > div.cell_input)' in about('cut-by-cell')[0], found
    assert about('cut-by-itself') and 'hidden by the block itself' in about('cut-by-itself')[0], found
    assert about('cut-at-bottom') and 'cut off at the bottom' in about('cut-at-bottom')[0], found
    assert about('source-scrolls') and 'should wrap' in about('source-scrolls')[0], found
    assert not about('output-scrolls') and not about('source-wraps'), found
    assert len(found) == 4, found


def test_rendering_check_sees_blocks_and_wide_boxes(browser):
    """A page summary laid out as the theme lays out a rubric (a flex column: each code span a block of its own), and a
    table and an equation wider than their column, as on the cli, results and objectives pages before the fix; the
    same summary, table and equation that fit are not reported."""
    found = _problems_of(browser, """<style>body { font: 16px sans-serif; } .col { width: 400px; }
          p.rubric { display: flex; flex-direction: column; } .block-table { display: block; overflow-x: auto; }
          mjx-container[display="true"] { display: block; overflow-x: auto; }</style><div class="col">
        <p class="page-summary rubric">The <code>silhouette-nb</code> console script</p>
        <p class="page-summary rubric" style="display: block">fastai <code>DataLoaders</code> for digits</p>
        <table class="block-table wide-output"><tr><td>verdict</td><td>claim</td><td>dataset</td><td>metric</td>
          <td>seeds</td><td>baseline</td><td>treatment</td><td>difference</td><td>interval</td></tr></table>
        <div class="table-wrapper"><table class="wide-markdown"><tr><td>a_long_unbreakable_name_of_a_setting</td>
          <td>another_long_unbreakable_name</td></tr></table></div>
        <table class="block-table fits"><tr><td>name</td><td>value</td></tr></table>
        <div class="math"><mjx-container display="true" class="eq-wide"><svg width="700" height="20"></svg></mjx-container></div>
        <div class="math"><mjx-container display="true" class="eq-fits"><svg width="300" height="20"></svg></mjx-container></div></div>""")
    print('\n'.join(found))
    def about(what): return [x for x in found if what in x]
    assert len(about('inline code laid out as a block')) == 1 and "'silhouette-nb'" in about('laid out as a block')[0], found
    assert about('table.block-table.wide-output') and 'a table' in about('wide-output')[0], found
    assert about('table.wide-markdown') and 'wider than its column' in about('wide-markdown')[0], found
    assert about('mjx-container.eq-wide') and 'a display equation 300px wider than its column' in about('eq-wide')[0], found
    assert not about('fits') and len(found) == 4, found
