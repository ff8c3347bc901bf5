"""The rendered docs site, opened page by page in headless Chromium with the network cut off.

The site is built by `docs/build.py` (reused when `docs/_build/html` is newer than every source), served
from 127.0.0.1 on a free port, and crawled once; each test below checks one property of that crawl:
no console errors, every image loaded, every internal link (and anchor) resolves, math typeset by the
local MathJax, an API entry for every name in each module's `__all__`, no request for another host,
search finds pages. Screenshots of the home and silhouette pages go to `docs/_build/screenshots/`.

Chromium comes from Debian (`apt-get install chromium chromium-driver`). Without it the tests skip,
except under CI (`CI=true`), where they fail.
"""
import ast, functools, http.server, json, os, re, shutil, socket, subprocess, sys, tempfile, threading, time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit
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
    d.set_page_load_timeout(60); d.set_script_timeout(30)
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
        # nbdev names a notebook's page after the notebook, less its number: 01_silhouette -> silhouette.html
        if names and m: res[py.stem] = (re.sub(r'^\d+_', '', Path(m.group(1)).stem) + '.html', names)
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
