"""Every GPU path in one command, at most 8 minutes on one GPU: the checks behind `make gpu-check`.

    python3 tools/gpu_check.py                        # every check on cuda; table, JSON and markdown
    python3 tools/gpu_check.py --only autocast bench  # some checks
    python3 tools/gpu_check.py --device cpu --tiny    # the whole flow on the CPU at tiny sizes (the rehearsal)

On a machine without CUDA (and `--device cuda`, the default) it prints one line saying so and exits 0. Otherwise it
runs these checks, in this order (the figures that matter most first), each ending pass, fail or skip with its
seconds, its figures and a one-line message, then prints a table, writes `gpu_check.json` and `gpu_check.md` to
`$OUT` when that is set (else `--out`, default benchmarks/out/) and exits 1 if any check failed:

- `autocast`     every loss and objective, forward + backward under `torch.autocast` with float16 and bfloat16 against
                 float32 without autocast (`autocast_errors`): fail above 1e-2 relative or with a non-finite gradient;
- `bench`        forward + backward time (CUDA events, median) and peak memory of our losses, pytorch-metric-learning's
                 `SupConLoss` and the matmul floor, B up to 16 384, and the chunked paths (`loss_benchmark`);
- `paper-smoke`  the `paper-smoke` suite (14 EfficientNet-B0 runs) on fixture CIFAR-10 and Caltech-101 written by
                 tools/paper_fixtures.py (or `--data-path`): images per second and host syncs per step of each run;
- `notebooks`    every notebook of nbs/ with a `#| cuda` cell, run by nbdev-test with `--flags cuda` (all at once);
- `gpu-tests`    `pytest -m gpu` over the test files that mark tests `gpu`;
- `nccl`         the global-batch losses on 2 processes over NCCL against one process, where 2 GPUs exist.

No venv needed: where fastai, pytorch-metric-learning or nbdev cannot be imported, the wheels of `make gpu-bundle`
(.gpu-bundle/cpXY/ for this Python, `--bundle`) are installed with pip, offline, into a temporary folder, which goes
on `PYTHONPATH` after the checkout; every child process is this Python (`python -m pytest`, and this script's
`--entry` for nbdev-test and silhouette-nb: no console scripts). Each check runs in a fresh child process, killed past
its time budget (`BUDGETS`; all of them, the set-up included, within `TOTAL` seconds): a check that hangs, raises or
crashes is a fail with its message (and traceback in the JSON), the CUDA state of one check does not leak into the
next, and the others still run. The JSON and the markdown are rewritten after every check, and SIGTERM or SIGINT
stops the run with the table so far. `autocast_errors` and `loss_benchmark` also run on the CPU (tests call them).
"""
import argparse, gc, hashlib, importlib, importlib.util, json, math, os, re, signal, statistics, subprocess, sys, tempfile, time, traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Seconds per check, from what each costs and the GPU's expected speed (measured CPU costs in the README's "On a GPU"):
# autocast: 15 losses x 3 small forward+backward runs, CUDA start dominates; bench: 3 sizes x 6 paths x 12 runs, the
# largest B = 16 384 (1 GiB Gram matrices); paper-smoke: 14 EfficientNet-B0 runs of 1 epoch (1 024 images, then 512 to
# evaluate) at ~8 s each on an H100 with 16 loader processes (60 s was too short); notebooks: 5 whole notebooks at
# once on 16 cores (65-260 s each on this project's 2-core CPU machine); gpu-tests: 6 tests after collecting fastai.
BUDGETS = {'autocast': 30, 'bench': 60, 'paper-smoke': 180, 'notebooks': 120, 'gpu-tests': 40, 'nccl': 30}
TOTAL = 470  # seconds for the set-up and all checks together: 8 minutes less 10 s for the table
TOL = 1e-2   # autocast: largest relative error of a loss value
NEEDS = ('fastai', 'fastcore', 'fastprogress', 'plum', 'pytorch_metric_learning', 'nbdev', 'execnb')  # what a bare python3 lacks
ENTRIES = {'silhouette-nb': ('silhouette_nb.cli', 'main'), 'nbdev-test': ('nbdev.test', 'nbdev_test'),
           'test-nb': ('gpu_check', 'test_notebook')}   # test-nb: one notebook outside nbs/ (the rehearsal's)


# ---------------------------------------------------------------- running checks, the table, the JSON and the markdown
def run_check(name, fn):
    "Result of `fn()`, which returns (status, message, figures): a dict; an exception is a fail with its traceback."
    t0 = time.perf_counter()
    try:
        status, message, figures = fn()
        assert status in ('pass', 'fail', 'skip'), f"check {name!r} returned status {status!r}"
        tb = None
    except Exception as e:
        status, message, figures, tb = 'fail', f"{type(e).__name__}: {e}".splitlines()[0], {}, traceback.format_exc()
    return {'name': name, 'status': status, 'seconds': time.perf_counter() - t0, 'message': message,
            'figures': figures, 'traceback': tb}

def run_checks(checks:dict)->list:
    "`run_check` on each name -> fn of `checks`, in order; one failing does not stop the others."
    return [run_check(name, fn) for name, fn in checks.items()]

def table(results:list)->str:
    "The pass/fail table: one line per check."
    w = max([5] + [len(r['name']) for r in results])
    lines = [f"{'check':{w}s}  status  {'seconds':>7s}  message"]
    lines += [f"{r['name']:{w}s}  {r['status']:6s}  {r['seconds']:7.1f}  {r['message']}" for r in results]
    return '\n'.join(lines)

def markdown(results:list, meta:dict)->str:
    "The results as markdown: what ran where, the table of checks, then the benchmark's and paper-smoke's figures."
    esc = lambda s: str(s).replace('|', '\\|').replace('\n', ' ')
    f = lambda v, fmt='.3g': '-' if v is None else v if isinstance(v, str) else format(v, fmt)
    out = ['# gpu-check', '', ', '.join(f"{k} {meta[k]}" for k in ('device_name', 'torch', 'cuda', 'python', 'commit', 'date')
                                      if meta.get(k) is not None) + (f"; set-up {meta['setup']['seconds']:.0f} s"
                                      if isinstance(meta.get('setup'), dict) and meta['setup'].get('seconds') else ''), '',
           '| check | status | seconds | message |', '| --- | --- | ---: | --- |']
    out += [f"| {r['name']} | {r['status']} | {r['seconds']:.1f} | {esc(r['message'])} |" for r in results]
    for r in results:
        figs = r.get('figures') or {}
        if r['name'] == 'bench' and figs.get('rows'):
            out += ['', f"## bench: forward + backward, d={figs['dim']}, K={figs['n_classes']} on {figs['device']}", '',
                    '| B | path | ms | peak MiB | loss |', '| ---: | --- | ---: | ---: | ---: |']
            out += [f"| {x['B']} | {x['path']} | {f(x['ms'], '.3f')} | {f(x['peak_mib'], '.1f')} | {f(x['loss'], '.4f')} |" for x in figs['rows']]
        if r['name'] == 'paper-smoke' and figs.get('runs'):
            out += ['', f"## paper-smoke: {figs.get('note', '')}", '',
                    '| dataset | objective | images/s | host syncs/step | s/epoch | peak MiB | top1 (meaningless) |',
                    '| --- | --- | ---: | ---: | ---: | ---: | ---: |']
            out += [f"| {x.get('dataset')} | {x.get('objective')} | {f(x.get('images_per_second'), '.0f')} | "
                    f"{f(x.get('syncs_per_step'), '.1f')} | {f(x.get('sec_per_epoch'), '.2f')} | {f(x.get('peak_mem_mib'), '.0f')} | "
                    f"{f(x.get('top1'), '.3f')} |" for x in figs['runs']]
    return '\n'.join(out) + '\n'

def _finite(o):
    "`o` with NaN and infinities as None: strict JSON."
    if isinstance(o, float): return o if math.isfinite(o) else None
    if isinstance(o, dict): return {str(k): _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)): return [_finite(v) for v in o]
    return o

def write_results(results:list, out:str|Path, **meta):
    "Write `meta` and the results as JSON to `out` and as markdown beside it (`.md`); folders are created."
    out = Path(out); out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_finite({**meta, 'checks': results}), indent=1, default=str) + '\n')
    out.with_suffix('.md').write_text(markdown(results, meta))

def report(results:list, # `run_check` results
           out:str|Path, # the JSON file (its folder is created); the markdown goes beside it
           **meta, # recorded beside the checks (torch version, device...)
          )->int: # exit status: 1 if any check failed
    "Print the table, write `meta` and the results as JSON and markdown, return the exit status."
    print(table(results))
    write_results(results, out, **meta)
    print(f"figures in {out} and {Path(out).with_suffix('.md')}")
    return int(any(r['status'] == 'fail' for r in results))


def run_command(cmd:list, timeout:float, capture:bool=True)->dict:
    """Run `cmd` in ROOT in a session of its own, killed with its children past `timeout` s (or when this process is
    interrupted, SIGTERM included): returncode (None when killed), seconds, output."""
    t0 = time.perf_counter()
    p = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, start_new_session=True, text=True,
                         stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None)
    try: out, rc = p.communicate(timeout=max(timeout, 0.1))[0], p.returncode
    except subprocess.TimeoutExpired:
        kill_tree(p.pid)
        out, rc = p.communicate()[0], None
    except BaseException:
        kill_tree(p.pid); raise
    return {'returncode': rc, 'seconds': time.perf_counter() - t0, 'output': out or ''}

def kill_tree(pid:int):
    """SIGKILL to the process group of `pid` and to every process below it, also those in sessions of their own (a
    check's commands run in theirs): nothing of a killed check keeps running, or holding the GPU."""
    try:
        import psutil
        below = psutil.Process(pid).children(recursive=True)   # before the kill: orphans are lost to init
    except Exception: below = []
    for kill in [lambda: os.killpg(pid, signal.SIGKILL)] + [p.kill for p in below]:
        try: kill()
        except Exception: pass

def entry(name:str)->list:
    "The command that runs console script `name` with this Python, with no console script: its function via `--entry`."
    return [sys.executable, Path(__file__).resolve(), '--entry', name]

def _tail(text, n=3000): return text[-n:]


# ---------------------------------------------------------------- set-up: the bundle, offline
class SetupError(Exception): pass

def missing_modules(names=NEEDS)->list: return [n for n in names if importlib.util.find_spec(n) is None]

def _version_ok(name, reqs):
    "The requirement strings of `reqs` ('spec (by pkg)') that the installed `name` does not meet (markers evaluated here)."
    import importlib.metadata as md
    from packaging.requirements import Requirement
    try: have = md.version(name)
    except md.PackageNotFoundError: return [f"{name} is not installed ({'; '.join(reqs)})"]
    bad = []
    for r in reqs:
        req = Requirement(r.split(' (by ')[0])
        if req.marker is not None and not req.marker.evaluate({'extra': ''}): continue
        if req.specifier and not req.specifier.contains(have, prereleases=True): bad.append(f"{name} {have} does not meet {r}")
    return bad

def install_bundle(bundle:str|Path|None=None, # the folder of the wheels and manifest.json; .gpu-bundle/cpXY for this Python
                   site:str|Path|None=None, # where to install them; a new temporary folder when None
                  )->dict: # set-up figures: bundle, site, wheels, seconds, unmet requirements
    """Install the bundle offline into `site` (`pip install --no-index --no-deps --target`) and put the checkout and
    `site` first on `sys.path` and on `PYTHONPATH` (for the children). A bundle for another Python, a wheel whose
    sha256 differs from its manifest, or an install that fails is a `SetupError` naming the problem."""
    t0, tag = time.perf_counter(), f"cp{sys.version_info[0]}{sys.version_info[1]}"
    folder = Path(bundle) if bundle else ROOT/'.gpu-bundle'/tag
    if not (folder/'manifest.json').exists():
        raise SetupError(f"{', '.join(missing_modules())} cannot be imported and there is no bundle at {folder}: run "
                         f"`make gpu-bundle` (PY_VERSION={sys.version_info[0]}.{sys.version_info[1]}) on a machine with network and carry {folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder}")
    man = json.loads((folder/'manifest.json').read_text())
    if man['python_version'] != f"{sys.version_info[0]}.{sys.version_info[1]}":
        raise SetupError(f"the bundle in {folder} is for Python {man['python_version']}, this is {sys.version.split()[0]}")
    for w in man['wheels']:
        f = folder/w['file']
        if not f.exists(): raise SetupError(f"the bundle lacks {w['file']} (in its manifest)")
        if hashlib.sha256(f.read_bytes()).hexdigest() != w['sha256']: raise SetupError(f"{w['file']} differs from the manifest's sha256")
    site = Path(site) if site else Path(tempfile.mkdtemp(prefix='silhouette-gpu-site-'))
    cmd = [sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--no-compile', '--no-cache-dir',
           '--disable-pip-version-check', '--target', str(site)] + [str(folder/w['file']) for w in man['wheels']]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode: raise SetupError(f"pip install of the bundle failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    use_paths([ROOT, site])
    unmet = [b for name, reqs in man.get('gpu_requirements', {}).items() for b in _version_ok(name, reqs)]
    still = missing_modules()
    if still: raise SetupError(f"after installing the bundle, {', '.join(still)} still cannot be imported")
    return {'bundle': str(folder), 'site': str(site), 'wheels': len(man['wheels']), 'mib': man['total_mib'],
            'seconds': time.perf_counter() - t0, 'unmet': unmet}

def use_paths(paths):
    "Put `paths` first on `sys.path` and on `PYTHONPATH`, so that this process and its children import from them."
    paths = [str(p) for p in paths]
    old = [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p and p not in paths]
    os.environ['PYTHONPATH'] = os.pathsep.join(paths + old)
    sys.path[:0] = [p for p in paths if p not in sys.path]
    importlib.invalidate_caches()

def setup(bundle=None)->dict:
    "The checkout first on the path; the bundle installed where the modules of `NEEDS` are missing (or `bundle` is given)."
    use_paths([ROOT])   # the checkout's silhouette_nb, also where an editable install points elsewhere
    if bundle is None and not missing_modules(): return {'bundle': None, 'seconds': 0.0, 'unmet': []}
    return install_bundle(bundle)


# ---------------------------------------------------------------- 1. notebooks with `#| cuda` cells
def cuda_notebooks(nbs:str|Path=ROOT/'nbs')->list:
    "The notebooks in `nbs` with a code cell flagged `cuda` (`#| cuda`, read as nbdev-test reads directives), sorted."
    from fastcore.nbio import read_nb
    return [p for p in sorted(Path(nbs).glob('*.ipynb'))
            if any(c.cell_type == 'code' and 'cuda' in c.directives for c in read_nb(p).cells)]

def check_notebooks(device, budget, opts=None):
    nbs = [Path(p).resolve() for p in (opts or {}).get('notebooks') or []] or cuda_notebooks()
    if not nbs: return 'skip', "no notebook has a `#| cuda` cell", {}
    run = lambda nb: run_command(entry('nbdev-test') + ['--flags', 'cuda', nb.relative_to(ROOT)] if nb.is_relative_to(ROOT/'nbs') else
                                 entry('test-nb') + ['--flags', 'cuda', nb], budget - 15)
    with ThreadPoolExecutor(len(nbs)) as ex: runs = dict(zip(nbs, ex.map(run, nbs)))
    figs = {nb.name: {'returncode': r['returncode'], 'seconds': r['seconds'],
                      'status': 'pass' if r['returncode'] == 0 else 'fail',
                      'tail': None if r['returncode'] == 0 else _tail(r['output'])} for nb, r in runs.items()}
    bad = [f"{n} {'timed out' if f['returncode'] is None else 'failed'}" for n, f in figs.items() if f['status'] == 'fail']
    msg = f"{len(nbs) - len(bad)} of {len(nbs)} notebooks passed" + (': ' + ', '.join(bad) if bad else '')
    return ('fail' if bad else 'pass'), msg, figs


# ---------------------------------------------------------------- 2. GPU-marked tests
def gpu_test_files(tests:str|Path=ROOT/'tests')->list:
    "The test files that mark a test `gpu` (collecting only these: the others may need what the GPU machine lacks)."
    return [p for p in sorted(Path(tests).glob('test_*.py')) if 'mark.gpu' in p.read_text()]

def check_gpu_tests(device, budget, opts=None):
    files = [p.relative_to(ROOT) for p in gpu_test_files()]
    if not files: return 'skip', "no test file marks a test gpu", {}
    r = run_command([sys.executable, '-m', 'pytest', '-m', 'gpu', '-q', '-p', 'no:cacheprovider', *files], budget - 10)
    last = next((l for l in reversed(r['output'].splitlines()) if l.strip()), '')
    figs = {'returncode': r['returncode'], 'summary': last, 'files': [str(f) for f in files]}
    if r['returncode'] is None: return 'fail', f"pytest -m gpu timed out after {r['seconds']:.0f} s", {**figs, 'tail': _tail(r['output'])}
    if r['returncode'] == 5: return 'skip', "pytest -m gpu: no test marked gpu was collected", figs
    if r['returncode'] == 0: return 'pass', f"pytest -m gpu: {last.strip('= ')}", figs
    return 'fail', f"pytest -m gpu: {last.strip('= ')}", {**figs, 'tail': _tail(r['output'])}


# ---------------------------------------------------------------- 3. autocast
def _autocast_cases(dim, n_classes):
    "name -> (make the module, views per sample, 'loss' (called on features) or 'objective' (on outputs))."
    from silhouette_nb.silhouette import SoftSilhouetteLoss
    from silhouette_nb.supcon import SupConLoss
    from silhouette_nb.corel import GaussianCOREL, CosineCOREL
    from silhouette_nb.objectives import OBJECTIVES, make_objective
    cases = {f'SoftSilhouetteLoss {d}': (lambda d=d: SoftSilhouetteLoss(distance=d), 1, 'loss')
             for d in ('euclidean', 'sqeuclidean', 'cosine')}
    cases['SupConLoss one view'] = (SupConLoss, 1, 'loss')
    cases['SupConLoss two views'] = (SupConLoss, 2, 'loss')
    cases['GaussianCOREL'] = (lambda: GaussianCOREL(n_classes, dim), 1, 'loss')
    cases['CosineCOREL'] = (lambda: CosineCOREL(n_classes, dim), 1, 'loss')
    cases.update({f'objective {s}': (lambda s=s: make_objective(s, n_classes, dim), 2, 'objective') for s in OBJECTIVES})
    return cases

def _loss_and_grads(make, kind, x, y, n_classes, ctx, seed):
    """Loss and gradients (of the inputs and every parameter) of one forward + backward inside `ctx`.
    The features come out of an identity `Linear`: exactly `x` in float32, `x` rounded to the autocast dtype under
    autocast (as a network's output would be), with the gradient flowing back through it to the float32 `x`."""
    import torch
    torch.manual_seed(seed)
    loss_fn, head = make().to(x.device), torch.nn.Linear(x.shape[-1], n_classes).to(x.device)
    proj = torch.nn.Linear(x.shape[-1], x.shape[-1], bias=False).to(x.device)
    with torch.no_grad(): proj.weight.copy_(torch.eye(x.shape[-1]))
    x = x.detach().clone().requires_grad_()
    with ctx:
        f = proj(x)
        loss = loss_fn(f, y) if kind == 'loss' else loss_fn({'features': f, 'logits': head(f)}, y)['loss']
    loss.float().backward()
    params = [p for m in (loss_fn, head) for p in m.parameters() if p.grad is not None]
    return loss.detach(), [x.grad] + [p.grad for p in params]

def autocast_errors(device:str='cuda', # where to run: 'cuda', 'cpu'...
                    dtypes:tuple=None, # autocast dtypes; default (float16, bfloat16)
                    batch:int=64, dim:int=32, n_classes:int=4, seed:int=0,
                   )->list: # one dict per loss x dtype
    """Every loss and objective under `torch.autocast(device type, dtype)` against float32 without autocast.
    Each entry: loss, dtype, reference and value (floats), rel_err of the value, grad_rel_err (largest gradient
    difference over the largest reference gradient entry), grad_finite, value_dtype, error (the message where a
    run raised, else None) and ok (no error, value within `TOL` relative, every gradient finite)."""
    import contextlib, torch
    dev = torch.device(device)
    dtypes = (torch.float16, torch.bfloat16) if dtypes is None else dtypes
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(batch) % n_classes)[torch.randperm(batch, generator=g)].to(dev)  # every class, several times
    out = []
    for name, (make, views, kind) in _autocast_cases(dim, n_classes).items():
        x = torch.randn(*((batch, dim) if views == 1 else (batch, views, dim)), generator=g).to(dev)
        ref = ref_grads = ref_err = None
        try: ref, ref_grads = _loss_and_grads(make, kind, x, y, n_classes, contextlib.nullcontext(), seed)
        except Exception as err: ref_err = f"float32 reference failed: {type(err).__name__}: {err}".splitlines()[0]
        for dt in dtypes:
            e = dict(loss=name, dtype=str(dt).replace('torch.', ''), reference=None if ref is None else float(ref),
                     value=None, rel_err=None, grad_rel_err=None, grad_finite=None, value_dtype=None, error=ref_err, ok=False)
            if ref_err is None:
                try:
                    v, grads = _loss_and_grads(make, kind, x, y, n_classes, torch.autocast(dev.type, dtype=dt), seed)
                    e.update(value=float(v), value_dtype=str(v.dtype).replace('torch.', ''),
                             rel_err=abs(float(v) - float(ref)) / max(abs(float(ref)), 1e-30),
                             grad_finite=all(bool(torch.isfinite(gr).all()) for gr in grads),
                             grad_rel_err=max(float((gr.float() - r).abs().max() / r.abs().max().clamp_min(1e-30))
                                              for gr, r in zip(grads, ref_grads)) if len(grads) == len(ref_grads) else None)
                    e['ok'] = math.isfinite(e['value']) and e['rel_err'] <= TOL and e['grad_finite']
                except Exception as err: e['error'] = f"{type(err).__name__}: {err}".splitlines()[0]
            out.append(e)
    return out

def check_autocast(device, budget, opts=None):
    rows = autocast_errors(device)
    bad = [r for r in rows if not r['ok']]
    worst = max((r for r in rows if r['rel_err'] is not None), key=lambda r: r['rel_err'], default=None)
    msg = f"{len(rows) - len(bad)} of {len(rows)} loss x dtype within {TOL:g} relative with finite gradients"
    if worst: msg += f"; largest error {worst['rel_err']:.1e} ({worst['loss']}, {worst['dtype']})"
    if bad: msg += f"; first failure: {bad[0]['loss']}, {bad[0]['dtype']}: " + (bad[0]['error'] or
                   f"rel_err {bad[0]['rel_err']:.1e}, grad_finite {bad[0]['grad_finite']}")
    for r in rows:
        print(f"{r['loss']:32s} {r['dtype']:9s} " + (f"rel err {r['rel_err']:.1e}  grad rel err {r['grad_rel_err'] or 0:.1e}"
              f"  {r['value_dtype']}" if r['error'] is None else r['error'][:100]), flush=True)
    return ('fail' if bad else 'pass'), msg, {'tolerance': TOL, 'rows': rows}


# ---------------------------------------------------------------- 4. loss benchmark
def _bench_paths(chunk_size, temperature=0.1):
    "path -> (make the loss fn, whether it runs at every size (else only at the largest))."
    from pytorch_metric_learning.losses import SupConLoss as PMLSupConLoss
    from silhouette_nb.silhouette import SoftSilhouetteLoss
    from silhouette_nb.supcon import SupConLoss
    floor = lambda: (lambda x, y: (x @ x.T).mean())  # one B x B product forward and two in backward: what any Gram loss pays
    return {'sil': (SoftSilhouetteLoss, True), 'supcon': (lambda: SupConLoss(temperature), True),
            'pml supcon': (lambda: PMLSupConLoss(temperature=temperature), True), 'floor': (floor, True),
            'sil chunked': (lambda: SoftSilhouetteLoss(chunk_size=chunk_size), False),
            'supcon chunked': (lambda: SupConLoss(temperature, chunk_size=chunk_size), False)}

def _is_oom(e):
    import torch
    return isinstance(e, torch.OutOfMemoryError) or 'out of memory' in str(e).lower()

def _fwd_bwd(fn, x, y):
    loss = fn(x, y); loss.backward(); x.grad = None
    return loss.detach()

def _timed(fn, x, y, cuda):
    "Seconds of one forward + backward: CUDA events on a GPU, perf_counter on the CPU."
    import torch
    if not cuda:
        t = time.perf_counter(); _fwd_bwd(fn, x, y); return time.perf_counter() - t
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(); _fwd_bwd(fn, x, y); end.record(); end.synchronize()
    return start.elapsed_time(end) / 1e3

def _peak_bytes(fn, x, y):
    "Peak bytes allocated by one forward + backward above what was allocated before (CUDA only)."
    import torch
    gc.collect(); torch.cuda.synchronize(); torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    _fwd_bwd(fn, x, y); torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base

def loss_benchmark(device:str='cuda', # where to run
                   sizes:tuple=(1024, 4096, 16384), # batch sizes B
                   repeats:int=10, # timed runs per path, interleaved across the paths of one size
                   warmup:int=2, # untimed runs per path first
                   dim:int=128, n_classes:int=100, chunk_size:int=1024, seed:int=0,
                  )->dict:
    """Forward + backward time and peak memory of each path of `_bench_paths` on `randn(B, dim)`, labels in
    0..n_classes-1; the chunked paths at the largest B only. Returns the settings, `rows` (B, path, ms: the median, or
    'oom'; peak_mib: CUDA peak above the inputs, None on the CPU; loss) and `ratios` per B (ours / PML, ours / floor)."""
    import torch
    dev, cuda = torch.device(device), torch.device(device).type == 'cuda'
    paths = _bench_paths(chunk_size)
    rows, ratios = [], []
    for B in sizes:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(B, dim, generator=g).to(dev).requires_grad_()
        y = torch.randint(0, n_classes, (B,), generator=g).to(dev)
        fns = {p: make() for p, (make, every) in paths.items() if every or B == max(sizes)}
        res = {p: {'B': B, 'path': p, 'ms': None, 'peak_mib': None, 'loss': None} for p in fns}
        for p, fn in fns.items():
            try:
                res[p]['loss'] = float(_fwd_bwd(fn, x, y))
                for _ in range(warmup - 1): _fwd_bwd(fn, x, y)
                if cuda: res[p]['peak_mib'] = _peak_bytes(fn, x, y) / 2**20
            except Exception as e:
                if not _is_oom(e): raise
                res[p]['ms'] = res[p]['peak_mib'] = 'oom'
            x.grad = None
            if cuda: gc.collect(); torch.cuda.empty_cache()  # after the except block: the error's frames are gone
        fns = {p: fn for p, fn in fns.items() if res[p]['ms'] != 'oom'}
        times = {p: [] for p in fns}
        for _ in range(repeats):
            for p, fn in fns.items(): times[p].append(_timed(fn, x, y, cuda))
        for p, t in times.items(): res[p]['ms'] = statistics.median(t) * 1e3
        rows += res.values()
        ms = {p: r['ms'] for p, r in res.items() if isinstance(r['ms'], float)}
        ratio = lambda a, b: ms[a] / ms[b] if a in ms and b in ms else None
        ratios.append({'B': B, 'sil / pml': ratio('sil', 'pml supcon'), 'supcon / pml': ratio('supcon', 'pml supcon'),
                       'sil / floor': ratio('sil', 'floor'), 'supcon / floor': ratio('supcon', 'floor')})
        del x, y, fns
    return {'device': str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if cuda else ''), 'dim': dim,
            'n_classes': n_classes, 'chunk_size': chunk_size, 'repeats': repeats, 'warmup': warmup, 'rows': rows, 'ratios': ratios}

def format_benchmark(b:dict)->str:
    "The benchmark as a table, then the ratios per B."
    f = lambda v, fmt: '-' if v is None else v if isinstance(v, str) else format(v, fmt)
    lines = [f"# loss forward+backward on {b['device']}, d={b['dim']}, K={b['n_classes']}, chunk_size={b['chunk_size']}, "
             f"median of {b['repeats']}", f"{'B':>6} | {'path':14s} | {'ms':>9s} | {'peak MiB':>9s} | {'loss':>8s}"]
    lines += [f"{r['B']:>6} | {r['path']:14s} | {f(r['ms'], '9.3f'):>9s} | {f(r['peak_mib'], '9.1f'):>9s} | {f(r['loss'], '8.4f'):>8s}"
              for r in b['rows']]
    lines += [f"B={r['B']}: " + ', '.join(f"{k} {f(v, '.3f')}" for k, v in r.items() if k != 'B') for r in b['ratios']]
    return '\n'.join(lines)

TINY_BENCH = dict(sizes=(48, 64), repeats=2, warmup=1, n_classes=8, chunk_size=16)   # --tiny: the CPU rehearsal

def check_bench(device, budget, opts=None):
    b = loss_benchmark(device, **(TINY_BENCH if (opts or {}).get('tiny') else {}))
    print(format_benchmark(b), flush=True)
    ooms = [f"{r['path']} at B={r['B']}" for r in b['rows'] if r['ms'] == 'oom' and r['path'] != 'pml supcon']
    mid = next((r for r in b['ratios'] if r['B'] == 4096), b['ratios'][-1])
    f = lambda v: '-' if v is None else f"{v:.2f}"
    msg = f"B={mid['B']}: sil/PML {f(mid['sil / pml'])}, supcon/PML {f(mid['supcon / pml'])}, sil/floor {f(mid['sil / floor'])}"
    if ooms: return 'fail', "out of memory: " + ', '.join(ooms), b
    return 'pass', msg, b


# ---------------------------------------------------------------- 5. paper-smoke
SMOKE_KEYS = ('dataset', 'objective', 'top1', 'wall_s', 'sec_per_epoch', 'peak_mem_mib', 'amp')
SMOKE_RATE = re.compile(r'images?_per|sync')  # images per second, syncs per step, if the rows carry them
SYNC_STEPS = (1, 2, 3)  # the training steps whose host syncs are counted (the first, 0, compiles and tunes)
# --tiny (the CPU rehearsal): 2 objectives on the tiny fixtures at 32 px, no loader processes
TINY_SMOKE = ['--objectives', 'ce+sil', 'supcon', '--workers', '0'] + [a for s in ('n_train=24', 'n_valid=none', 'size=32', 'bs=4',
              'balanced=2') for a in ('--set', s)]

def _load_tool(name):
    "A module of tools/ by its file (tools/ is no package)."
    spec = importlib.util.spec_from_file_location(name, ROOT/'tools'/f'{name}.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

def _median(xs):
    xs = [x for x in xs if isinstance(x, (int, float))]
    return statistics.median(xs) if xs else None

def smoke_runs(rows:list, syncs:list)->list:
    """One dict per run: the row's `SMOKE_KEYS`, images_per_second (training images over `sec_per_epoch`, where the
    run's n_train is known) and syncs_per_step (the mean over `SYNC_STEPS` that `--syncs` counted for its key)."""
    by_key = {s['key']: s for s in syncs}
    runs = []
    for row in rows:
        run = {k: v for k, v in row.items() if k in SMOKE_KEYS or SMOKE_RATE.search(k)}
        n, spe = (row.get('config') or {}).get('n_train'), row.get('sec_per_epoch')
        run.setdefault('images_per_second', n / spe if isinstance(n, int) and isinstance(spe, (int, float)) and spe > 0 else None)
        s = by_key.get(row.get('key'), {})
        run.setdefault('syncs_per_step', s.get('syncs_per_step'))
        if s.get('ops'): run['sync_ops'] = s['ops']
        runs.append(run)
    return runs

def check_paper_smoke(device, budget, opts=None):
    opts, t0 = opts or {}, time.perf_counter()
    from silhouette_nb.config import SUITES
    if 'paper-smoke' not in SUITES: return 'skip', "silhouette_nb.config.SUITES has no 'paper-smoke' suite", {}
    tiny = bool(opts.get('tiny'))
    objectives = TINY_SMOKE[1:3] if tiny else None
    n_runs = len([c for c in SUITES['paper-smoke'].configs() if objectives is None or getattr(c, 'objective', None) in objectives])
    with tempfile.TemporaryDirectory() as d:
        data, fixtures, note = opts.get('data_path'), None, "data from --data-path"
        if data is None:
            pf = _load_tool('paper_fixtures')
            data = Path(d)/'data'
            fixtures = pf.write_paper_fixtures(data, tiny)
            note = pf.NOTE
            print(f"paper-smoke: fixtures written in {fixtures['seconds']:.1f} s ({note})", flush=True)
        syncs = Path(d)/'syncs.jsonl'
        cmd = entry('silhouette-nb') + ['--syncs', syncs] + (['--fixtures', data] if fixtures else []) + [
            '--', 'suite', 'paper-smoke', '--device', device, '--out', Path(d)/'out', '--no-bar', '--save-model', 'none',
            '--data-path', data] + (TINY_SMOKE if tiny else [])
        r = run_command(cmd, budget - 10 - (time.perf_counter() - t0))
        res = Path(d)/'out'/'results.jsonl'
        rows = [json.loads(l) for l in (res.read_text().splitlines() if res.exists() else []) if l.strip()]
        sync_rows = [json.loads(l) for l in (syncs.read_text().splitlines() if syncs.exists() else []) if l.strip()]
    runs = smoke_runs(rows, sync_rows)
    figs = {'returncode': r['returncode'], 'seconds': r['seconds'], 'runs': runs, 'fixtures': fixtures, 'note': note,
            'tail': _tail(r['output'])}
    done = len({row.get('key') for row in rows})
    if r['returncode'] is None: return 'fail', f"timed out after {r['seconds']:.0f} s with {done} of {n_runs} runs", figs
    if r['returncode'] or done < n_runs:
        return 'fail', f"exit code {r['returncode']}, {done} of {n_runs} runs recorded", figs
    rate = lambda ds: _median(x.get('images_per_second') for x in runs if x.get('dataset') == ds)
    f = lambda v, fmt: '-' if v is None else format(v, fmt)
    msg = (f"{done} runs in {r['seconds']:.0f} s; median images/s CIFAR-10 {f(rate('cifar10'), '.0f')}, Caltech-101 "
           f"{f(rate('caltech101'), '.0f')}; host syncs/step {f(_median(x.get('syncs_per_step') for x in runs), '.1f')}")
    return 'pass', msg + ('; fixture data: accuracies mean nothing' if fixtures else ''), figs


def count_syncs_per_step(path:str|Path, # a JSON-lines file: one line per run
                         steps:tuple=SYNC_STEPS):
    """Make every run of this process count the host syncs of its training steps `steps` of the first epoch, each
    from its `before_batch` to the next one (the loading of the next batch included), and append {key, dataset,
    objective, steps, syncs_per_step, ops} to `path` after its first fit. A sync is an operation that
    `validation._is_sync` names (what `validation.count_syncs` counts) on a tensor of the run's device: on a GPU a read
    of a CPU tensor's value waits for nothing and is not counted; on the CPU every such read counts."""
    import collections, torch
    from torch.utils._pytree import tree_leaves
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.overrides import TorchFunctionMode
    from fastai.callback.core import Callback
    import silhouette_nb.runner as R
    from silhouette_nb.validation import _is_sync, _SYNC_METHODS
    def on_device(args, kind):
        return any(isinstance(t, torch.Tensor) and t.device.type == kind for t in tree_leaves(args))
    class Dispatch(TorchDispatchMode):
        def __init__(self, counts, kind): super().__init__(); self.counts, self.kind = counts, kind
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if _is_sync(func, args, kwargs) and on_device(args, self.kind): self.counts[f'aten.{func.overloadpacket.__name__}'] += 1
            return func(*args, **kwargs)
    class Methods(TorchFunctionMode):
        def __init__(self, counts, kind): super().__init__(); self.counts, self.kind = counts, kind
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, '__name__', None) in _SYNC_METHODS and on_device(args, self.kind): self.counts[f'Tensor.{func.__name__}'] += 1
            return func(*args, **(kwargs or {}))
    class count_syncs:
        def __init__(self, kind): self.counts, self.modes = collections.Counter(), (Methods(None, kind), Dispatch(None, kind))
        def __enter__(self):
            for m in self.modes: m.counts = self.counts; m.__enter__()
            return self.counts
        def __exit__(self, *exc):
            for m in reversed(self.modes): m.__exit__(*exc)
    class StepSyncs(Callback):
        order = -100
        def __init__(self, cfg): self.cfg, self.cm, self.cur, self.counts, self.written, self.error = cfg, None, None, [], False, None
        def _close(self):
            if self.cm is None: return
            c = dict(self.cur)
            try: self.cm.__exit__(None, None, None)
            except Exception as e: self.error = f"{type(e).__name__}: {e}"
            self.cm = None; self.counts.append(c)
        def before_batch(self):
            if not self.training or self.written: return
            self._close()
            if self.epoch == 0 and self.iter in steps and self.error is None:
                self.cm = count_syncs(torch.device(self.dls.device).type); self.cur = self.cm.__enter__()
        def before_validate(self): self._close()
        def after_fit(self):
            self._close()
            if self.written or not self.counts: return
            self.written, ops = True, {}
            for c in self.counts:
                for k, v in c.items(): ops[k] = ops.get(k, 0) + v / len(self.counts)
            with open(path, 'a') as f:
                f.write(json.dumps({'key': self.cfg.key, 'dataset': self.cfg.dataset, 'objective': self.cfg.objective,
                                    'steps': len(self.counts), 'syncs_per_step': sum(ops.values()), 'ops': ops,
                                    'error': self.error}) + '\n')
    orig = R.run_callbacks
    R.run_callbacks = lambda cfg, device: orig(cfg, device) + [StepSyncs(cfg)]

def test_notebook()->int:
    """`--entry test-nb --flags FLAGS NB`: nbdev's `test_nb` on the notebook NB, with the project's `tst_flags` skipped
    but FLAGS run, as nbdev-test does (nbdev-test itself, given a notebook outside the project's nbs/, tests those)."""
    from nbdev.config import get_config
    from nbdev.test import test_nb
    args = sys.argv[1:]
    flags = args[args.index('--flags') + 1].split() if '--flags' in args else []
    nb = [a for a in args if a.endswith('.ipynb')][0]
    cfg = get_config()
    skip = cfg.tst_flags.split() if isinstance(cfg.tst_flags, str) else list(cfg.tst_flags)
    ok, secs = test_nb(Path(nb).resolve(), skip_flags=skip, force_flags=flags, basepath=cfg.config_path, do_print=True)
    print(f"{Path(nb).name}: {'passed' if ok else 'failed'} in {secs:.1f} s")
    return 0 if ok else 1

def run_entry(argv:list)->int:
    """`--entry NAME [--syncs FILE] [--fixtures DIR] [--] ARGS`: run console script NAME (`ENTRIES`) in this process
    with ARGS; `--fixtures` points torchvision's CIFAR-10 checks at the fixtures there, `--syncs` counts host syncs."""
    name, rest, syncs, fixtures = argv[0], list(argv[1:]), None, None
    while rest[:1] in (['--syncs'], ['--fixtures']):
        if rest[0] == '--syncs': syncs = rest[1]
        else: fixtures = rest[1]
        rest = rest[2:]
    if rest[:1] == ['--']: rest = rest[1:]
    if fixtures: _load_tool('paper_fixtures').point_torchvision_at(fixtures)
    if syncs: count_syncs_per_step(syncs)
    mod, fn = ENTRIES[name]
    sys.argv = [name] + rest
    try: rc = getattr(sys.modules[__name__], fn)() if mod == 'gpu_check' else getattr(importlib.import_module(mod), fn)()
    except SystemExit as e: rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    rc = rc if isinstance(rc, int) else 0
    if name in ('nbdev-test', 'test-nb'):   # IPython's atexit gc.collect was seen to hang a bare environment's exit
        sys.stdout.flush(); sys.stderr.flush(); os._exit(rc)
    return rc


# ---------------------------------------------------------------- 6. NCCL
def _global_batch_errors():
    "`global_batch_errors` from whichever module has it."
    for mod in ('silhouette_nb.distributed', 'silhouette_nb.process_group'):
        try: return getattr(importlib.import_module(mod), 'global_batch_errors')
        except (ImportError, AttributeError): pass
    raise ImportError("neither silhouette_nb.distributed nor silhouette_nb.process_group has global_batch_errors")

def nccl_errors(nproc:int=2, backend:str='nccl', batch:int=23, dim:int=8, n_classes:int=4, seed:int=0)->dict:
    "name -> largest differences (loss, grad, param_grad) of the gathered losses on `nproc` processes vs one, float64."
    import torch
    from silhouette_nb.silhouette import SoftSilhouetteLoss
    from silhouette_nb.supcon import SupConLoss
    from silhouette_nb.corel import GaussianCOREL, CosineCOREL
    g = torch.Generator().manual_seed(seed)
    x, v = torch.randn(batch, dim, generator=g, dtype=torch.float64), torch.randn(batch, 2, dim, generator=g, dtype=torch.float64)
    y = torch.randint(0, n_classes, (batch,), generator=g)
    torch.manual_seed(seed)
    cases = {f'silhouette {d}': (SoftSilhouetteLoss(0.1, d, gather=True), x, y) for d in ('euclidean', 'cosine')}
    cases['silhouette euclidean, chunk_size=5'] = (SoftSilhouetteLoss(0.1, gather=True, chunk_size=5), x, y)
    cases['supcon two views'] = (SupConLoss(0.1, gather=True), v, y)
    cases['gaussian corel'] = (GaussianCOREL(n_classes, dim, gather=True).double(), x, y)
    cases['cosine corel'] = (CosineCOREL(n_classes, dim, gather=True).double(), x, y)
    return _global_batch_errors()(cases, nproc=nproc, backend=backend, timeout=120)

def check_nccl(device, budget, opts=None):
    import torch
    n = torch.cuda.device_count()
    if n < 2: return 'skip', f"needs 2 GPUs, found {n}", {'gpus': n}
    errors = nccl_errors()
    bad = [k for k, e in errors.items() if not max(e.values()) < 1e-10]
    worst = max(max(e.values()) for e in errors.values())
    return ('fail' if bad else 'pass'), (f"{len(errors) - len(bad)} of {len(errors)} losses within 1e-10 of one process "
                                         f"(largest difference {worst:.1e})" + (f"; over: {', '.join(bad)}" if bad else '')), errors


CHECKS = {'autocast': check_autocast, 'bench': check_bench, 'paper-smoke': check_paper_smoke, 'notebooks': check_notebooks,
          'gpu-tests': check_gpu_tests, 'nccl': check_nccl}


# ---------------------------------------------------------------- each check in a child process
def run_in_child(name:str, device:str, budget:float, opts:dict|None=None)->dict:
    "`run_check` of CHECKS[name] in a fresh process of this script, killed (a fail) past `budget` seconds."
    opts = opts or {}
    with tempfile.TemporaryDirectory() as d:
        res = Path(d)/'result.json'
        cmd = [sys.executable, Path(__file__).resolve(), '--child', name, '--child-out', res, '--device', device, '--budget', budget]
        cmd += (['--tiny'] if opts.get('tiny') else []) + (['--data-path', opts['data_path']] if opts.get('data_path') else [])
        cmd += ['--notebooks', *opts['notebooks']] if opts.get('notebooks') else []
        r = run_command(cmd, budget, capture=False)
        if res.exists(): return json.loads(res.read_text())
    why = (f"timed out after its budget of {budget:.0f} s" if r['returncode'] is None else
           f"its process exited with code {r['returncode']} without a result")
    return {'name': name, 'status': 'fail', 'seconds': r['seconds'], 'message': why, 'figures': {}, 'traceback': None}

def _opts(a): return {'tiny': a.tiny, 'data_path': a.data_path, 'notebooks': a.notebooks}

def _child(a):
    Path(a.child_out).write_text(json.dumps(_finite(run_check(a.child, lambda: CHECKS[a.child](a.device, a.budget, _opts(a)))), default=str))

def _git_commit():
    try: return subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip() or None
    except OSError: return None

class Stopped(Exception): pass

def _stop(signum, frame): raise Stopped(signal.Signals(signum).name)

def not_run(name, why): return {'name': name, 'status': 'fail', 'seconds': 0., 'figures': {}, 'traceback': None, 'message': f"not run: {why}"}

def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if argv[:1] == ['--entry']: return run_entry(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default=None, help="the JSON file of all figures (the markdown goes beside it); "
                    "default $OUT/gpu_check.json where OUT is set, else benchmarks/out/gpu_check.json")
    ap.add_argument('--only', nargs='+', choices=list(CHECKS), metavar='NAME', help=f"only these checks: {', '.join(CHECKS)}")
    ap.add_argument('--device', default='cuda', help="the device (default: cuda; 'cpu' runs the flow without a GPU)")
    ap.add_argument('--tiny', action='store_true', help="tiny sizes (benchmark, paper-smoke fixtures and runs): a rehearsal on the CPU")
    ap.add_argument('--time-scale', type=float, default=1., help="multiply every time budget and the total (a slow CPU)")
    ap.add_argument('--bundle', default=None, help="the wheels folder of `make gpu-bundle` (default .gpu-bundle/cpXY when fastai... are missing)")
    ap.add_argument('--data-path', default=None, help="real data for paper-smoke (its --data-path); fixtures are written when absent")
    ap.add_argument('--notebooks', nargs='+', default=None, help="these notebooks instead of those of nbs/ with a `#| cuda` cell")
    ap.add_argument('--child', choices=list(CHECKS), help=argparse.SUPPRESS)
    ap.add_argument('--child-out', help=argparse.SUPPRESS)
    ap.add_argument('--budget', type=float, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child: _child(a); return 0
    t0 = time.monotonic()
    # the children stream what they print; with a block-buffered stdout nbdev-test's and pytest's processes were seen
    # to hang at their exit (IPython's atexit gc.collect) under a bare environment
    os.environ.setdefault('PYTHONUNBUFFERED', '1'); os.environ.setdefault('MPLBACKEND', 'Agg')
    try: import torch
    except ImportError:
        print(f"gpu-check: torch cannot be imported by {sys.executable}: nothing to check"); return 0
    cuda = torch.device(a.device).type == 'cuda'
    if cuda and not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device on this machine (torch {torch.__version__}), nothing to check"); return 0
    out = Path(a.out) if a.out else Path(os.environ['OUT'])/'gpu_check.json' if os.environ.get('OUT') else ROOT/'benchmarks'/'out'/'gpu_check.json'
    names, results, total = a.only or list(CHECKS), [], TOTAL * a.time_scale
    name_of = torch.cuda.get_device_name(torch.device(a.device)) if cuda else 'cpu'
    meta = dict(torch=torch.__version__, cuda=torch.version.cuda, python=sys.version.split()[0], device=a.device, device_name=name_of,
                gpus=torch.cuda.device_count() if cuda else 0, tiny=a.tiny, commit=_git_commit(), date=time.strftime('%Y-%m-%d %H:%M:%S'))
    print(f"gpu-check: {', '.join(names)} on {a.device} ({name_of}, {meta['gpus']} GPUs, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}, Python {meta['python']}); results to {out}", flush=True)
    try: meta['setup'] = setup(a.bundle)
    except SetupError as e:
        meta['setup'] = {'error': str(e)}
        return report([not_run(n, f"set-up failed: {e}") for n in names], out, **meta)
    s = meta['setup']
    print("gpu-check: " + (f"{s['wheels']} wheels ({s['mib']:.1f} MiB) installed offline into {s['site']} in {s['seconds']:.1f} s"
                           if s.get('bundle') else "fastai, pytorch-metric-learning and nbdev import here: no bundle needed") +
          ''.join(f"\ngpu-check: warning: {u}" for u in s['unmet']), flush=True)
    old = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for name in names:
            budget = min(BUDGETS[name] * a.time_scale, total - (time.monotonic() - t0))
            print(f"--- {name} (budget {budget:.0f} s)", flush=True)
            results.append(run_in_child(name, a.device, budget, _opts(a)) if budget >= 10 else
                           not_run(name, f"the {total:.0f} s of all checks were spent"))
            print(f"--- {name}: {results[-1]['status']}: {results[-1]['message']}", flush=True)
            write_results(results, out, **meta, seconds=time.monotonic() - t0)   # what is done survives a kill
    except Stopped as e:
        results += [not_run(n, f"stopped by {e}") for n in names[len(results):]]
    finally:
        for sig, h in old.items(): signal.signal(sig, h)
    return report(results, out, **meta, seconds=time.monotonic() - t0)


if __name__ == '__main__':
    sys.exit(main())
