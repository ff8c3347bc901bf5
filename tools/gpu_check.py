"""Every GPU path in one command, at most 8 minutes on one GPU: the checks behind `make gpu-check`.

    python tools/gpu_check.py                        # every check on cuda; table, then benchmarks/out/gpu_check.json
    python tools/gpu_check.py --only autocast bench  # some checks
    python tools/gpu_check.py --device cuda:1        # another GPU

On a machine without CUDA it prints one line saying so and exits 0. Otherwise it runs these checks, each ending
pass, fail or skip with its seconds, its figures and a one-line message, then prints a table, writes everything
to `--out` as JSON and exits 1 if any check failed:

- `notebooks`    every notebook of nbs/ with a `#| cuda` cell, run by `nbdev-test --flags cuda NB` (all at once);
- `gpu-tests`    `pytest -m gpu` (none collected: skip);
- `autocast`     every loss and objective, forward + backward under `torch.autocast` with float16 and bfloat16 against
                 float32 without autocast (`autocast_errors`): fail above 1e-2 relative or with a non-finite gradient;
- `bench`        forward + backward time (CUDA events, median) and peak memory of our losses, pytorch-metric-learning's
                 `SupConLoss` and the matmul floor, B up to 16 384, and the chunked paths (`loss_benchmark`);
- `paper-smoke`  `silhouette-nb suite paper-smoke --device cuda` where that suite exists (`--data-path` for its data);
- `nccl`         the global-batch losses on 2 processes over NCCL against one process, where 2 GPUs exist.

Each check runs in a fresh child process of this script, killed past its time budget (`BUDGETS`, within `TOTAL`
seconds in all): a check that hangs, raises or crashes is a fail with its message (and traceback in the JSON), the
CUDA state of one check does not leak into the next, and the others still run. `autocast_errors` and
`loss_benchmark` also run on the CPU (tests call them there).
"""
import argparse, gc, importlib, json, math, os, re, signal, statistics, subprocess, sys, tempfile, time, traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's scripts (nbdev-test, silhouette-nb), next to its python
BUDGETS = {'notebooks': 180, 'gpu-tests': 60, 'autocast': 30, 'bench': 90, 'paper-smoke': 60, 'nccl': 30}  # seconds
TOTAL = 470  # seconds for all checks together: 8 minutes less the start
TOL = 1e-2   # autocast: largest relative error of a loss value


# ---------------------------------------------------------------- running checks, the table and the JSON
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

def _finite(o):
    "`o` with NaN and infinities as None: strict JSON."
    if isinstance(o, float): return o if math.isfinite(o) else None
    if isinstance(o, dict): return {str(k): _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)): return [_finite(v) for v in o]
    return o

def report(results:list, # `run_check` results
           out:str|Path, # the JSON file (its folder is created)
           **meta, # recorded beside the checks (torch version, device...)
          )->int: # exit status: 1 if any check failed
    "Print the table, write `meta` and the results as JSON to `out`, return the exit status."
    print(table(results))
    out = Path(out); out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_finite({**meta, 'checks': results}), indent=1, default=str) + '\n')
    print(f"figures in {out}")
    return int(any(r['status'] == 'fail' for r in results))


def run_command(cmd:list, timeout:float, capture:bool=True)->dict:
    "Run `cmd` in ROOT in a session of its own, killed with its children past `timeout` s: returncode (None then), seconds, output."
    t0 = time.perf_counter()
    p = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, start_new_session=True, text=True,
                         stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None)
    try: out, rc = p.communicate(timeout=timeout)[0], p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, rc = p.communicate()[0], None
    return {'returncode': rc, 'seconds': time.perf_counter() - t0, 'output': out or ''}

def _tail(text, n=3000): return text[-n:]


# ---------------------------------------------------------------- 1. notebooks with `#| cuda` cells
def cuda_notebooks(nbs:str|Path=ROOT/'nbs')->list:
    "The notebooks in `nbs` with a code cell flagged `cuda` (`#| cuda`, read as nbdev-test reads directives), sorted."
    from fastcore.nbio import read_nb
    return [p for p in sorted(Path(nbs).glob('*.ipynb'))
            if any(c.cell_type == 'code' and 'cuda' in c.directives for c in read_nb(p).cells)]

def check_notebooks(device, budget):
    nbs = cuda_notebooks()
    if not nbs: return 'skip', "no notebook has a `#| cuda` cell", {}
    run = lambda nb: run_command([BIN/'nbdev-test', '--flags', 'cuda', nb.relative_to(ROOT)], budget - 15)
    with ThreadPoolExecutor(len(nbs)) as ex: runs = dict(zip(nbs, ex.map(run, nbs)))
    figs = {nb.name: {'returncode': r['returncode'], 'seconds': r['seconds'],
                      'status': 'pass' if r['returncode'] == 0 else 'fail',
                      'tail': None if r['returncode'] == 0 else _tail(r['output'])} for nb, r in runs.items()}
    bad = [f"{n} {'timed out' if f['returncode'] is None else 'failed'}" for n, f in figs.items() if f['status'] == 'fail']
    msg = f"{len(nbs) - len(bad)} of {len(nbs)} notebooks passed" + (': ' + ', '.join(bad) if bad else '')
    return ('fail' if bad else 'pass'), msg, figs


# ---------------------------------------------------------------- 2. GPU-marked tests
def check_gpu_tests(device, budget):
    r = run_command([sys.executable, '-m', 'pytest', '-m', 'gpu', '-q', '-p', 'no:cacheprovider'], budget - 10)
    last = next((l for l in reversed(r['output'].splitlines()) if l.strip()), '')
    figs = {'returncode': r['returncode'], 'summary': last}
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

def check_autocast(device, budget):
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

def check_bench(device, budget):
    b = loss_benchmark(device)
    print(format_benchmark(b), flush=True)
    ooms = [f"{r['path']} at B={r['B']}" for r in b['rows'] if r['ms'] == 'oom' and r['path'] != 'pml supcon']
    mid = next((r for r in b['ratios'] if r['B'] == 4096), b['ratios'][-1])
    f = lambda v: '-' if v is None else f"{v:.2f}"
    msg = f"B={mid['B']}: sil/PML {f(mid['sil / pml'])}, supcon/PML {f(mid['supcon / pml'])}, sil/floor {f(mid['sil / floor'])}"
    if ooms: return 'fail', "out of memory: " + ', '.join(ooms), b
    return 'pass', msg, b


# ---------------------------------------------------------------- 5. paper-smoke
SMOKE_KEYS = ('dataset', 'objective', 'top1', 'wall_s', 'sec_per_epoch', 'peak_mem_mib')
SMOKE_RATE = re.compile(r'images?_per|sync')  # images per second, syncs per step, if the rows carry them

def check_paper_smoke(device, budget, data_path=None):
    from silhouette_nb.config import SUITES
    if 'paper-smoke' not in SUITES: return 'skip', "silhouette_nb.config.SUITES has no 'paper-smoke' suite", {}
    keys = {c.key for c in SUITES['paper-smoke'].configs()}
    with tempfile.TemporaryDirectory() as d:
        cmd = [BIN/'silhouette-nb', 'suite', 'paper-smoke', '--device', device, '--out', d, '--no-bar']
        r = run_command(cmd + (['--data-path', data_path] if data_path else []), budget - 10)
        lines = (Path(d)/'results.jsonl').read_text().splitlines() if (Path(d)/'results.jsonl').exists() else []
    rows = [json.loads(l) for l in lines if l.strip()]
    runs = [{k: v for k, v in row.items() if k in SMOKE_KEYS or SMOKE_RATE.search(k)} for row in rows]
    figs = {'returncode': r['returncode'], 'seconds': r['seconds'], 'runs': runs, 'tail': _tail(r['output'])}
    done = keys & {row.get('key') for row in rows}
    if r['returncode'] is None: return 'fail', f"timed out after {r['seconds']:.0f} s with {len(done)} of {len(keys)} runs", figs
    if r['returncode'] or len(done) < len(keys):
        return 'fail', f"exit code {r['returncode']}, {len(done)} of {len(keys)} runs recorded", figs
    rates = sorted({k for run in runs for k in run if SMOKE_RATE.search(k)})
    return 'pass', f"{len(done)} runs in {r['seconds']:.0f} s" + (f"; rows carry {', '.join(rates)}" if rates else
                                                                  "; rows carry no images/s or syncs/step"), figs


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

def check_nccl(device, budget):
    import torch
    n = torch.cuda.device_count()
    if n < 2: return 'skip', f"needs 2 GPUs, found {n}", {'gpus': n}
    errors = nccl_errors()
    bad = [k for k, e in errors.items() if not max(e.values()) < 1e-10]
    worst = max(max(e.values()) for e in errors.values())
    return ('fail' if bad else 'pass'), (f"{len(errors) - len(bad)} of {len(errors)} losses within 1e-10 of one process "
                                         f"(largest difference {worst:.1e})" + (f"; over: {', '.join(bad)}" if bad else '')), errors


CHECKS = {'notebooks': check_notebooks, 'gpu-tests': check_gpu_tests, 'autocast': check_autocast, 'bench': check_bench,
          'paper-smoke': check_paper_smoke, 'nccl': check_nccl}


# ---------------------------------------------------------------- each check in a child process
def run_in_child(name:str, device:str, budget:float, data_path:str|None=None)->dict:
    "`run_check` of CHECKS[name] in a fresh process of this script, killed (a fail) past `budget` seconds."
    with tempfile.TemporaryDirectory() as d:
        res = Path(d)/'result.json'
        cmd = [sys.executable, Path(__file__).resolve(), '--child', name, '--child-out', res, '--device', device, '--budget', budget]
        r = run_command(cmd + (['--data-path', data_path] if data_path else []), budget, capture=False)
        if res.exists(): return json.loads(res.read_text())
    why = (f"timed out after its budget of {budget:.0f} s" if r['returncode'] is None else
           f"its process exited with code {r['returncode']} without a result")
    return {'name': name, 'status': 'fail', 'seconds': r['seconds'], 'message': why, 'figures': {}, 'traceback': None}

def _child(a):
    fn = CHECKS[a.child]
    call = (lambda: fn(a.device, a.budget, a.data_path)) if a.child == 'paper-smoke' else (lambda: fn(a.device, a.budget))
    Path(a.child_out).write_text(json.dumps(_finite(run_check(a.child, call)), default=str))

def _git_commit():
    try: return subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip() or None
    except OSError: return None

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default=str(ROOT/'benchmarks'/'out'/'gpu_check.json'), help='the JSON file of all figures')
    ap.add_argument('--only', nargs='+', choices=list(CHECKS), metavar='NAME', help=f"only these checks: {', '.join(CHECKS)}")
    ap.add_argument('--device', default='cuda', help='the CUDA device (default: cuda)')
    ap.add_argument('--data-path', default=None, help="data for the paper-smoke suite (its --data-path)")
    ap.add_argument('--child', choices=list(CHECKS), help=argparse.SUPPRESS)
    ap.add_argument('--child-out', help=argparse.SUPPRESS)
    ap.add_argument('--budget', type=float, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child: _child(a); return 0
    import torch
    if not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device on this machine (torch {torch.__version__}), nothing to check"); return 0
    names, t0, results = a.only or list(CHECKS), time.monotonic(), []
    print(f"gpu-check: {', '.join(names)} on {a.device} ({torch.cuda.get_device_name(torch.device(a.device))}, "
          f"{torch.cuda.device_count()} GPUs, torch {torch.__version__}, CUDA {torch.version.cuda})", flush=True)
    for name in names:
        budget = min(BUDGETS[name], TOTAL - (time.monotonic() - t0))
        print(f"--- {name} (budget {budget:.0f} s)", flush=True)
        results.append(run_in_child(name, a.device, budget, a.data_path) if budget >= 10 else
                       {'name': name, 'status': 'fail', 'seconds': 0., 'figures': {}, 'traceback': None,
                        'message': f"not run: the {TOTAL} s of all checks were spent"})
        print(f"--- {name}: {results[-1]['status']}: {results[-1]['message']}", flush=True)
    return report(results, a.out, torch=torch.__version__, cuda=torch.version.cuda, device=a.device,
                  device_name=torch.cuda.get_device_name(torch.device(a.device)), gpus=torch.cuda.device_count(),
                  commit=_git_commit(), date=time.strftime('%Y-%m-%d %H:%M:%S'), seconds=time.monotonic() - t0)


if __name__ == '__main__':
    sys.exit(main())
