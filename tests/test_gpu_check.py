"""`tools/gpu_check.py` (`make gpu-check`) on the CPU: the one-line exit without CUDA, running checks (a check that
raises is a fail and the others run), the table, the JSON and the exit status, a check's child process and its time
budget, each check's verdict from faked command results, `autocast_errors` and `loss_benchmark` on the CPU, the
`#| cuda` notebook discovery, and the global-batch errors on gloo. The GPU-marked tests at the end run the two
measuring functions on CUDA (`pytest -m gpu`, which `make gpu-check` runs).
"""
import importlib.util, json, math, re, subprocess, sys, types
from pathlib import Path
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('gpu_check', ROOT/'tools'/'gpu_check.py')
gpu_check = importlib.util.module_from_spec(spec); spec.loader.exec_module(gpu_check)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------- without CUDA: one line, exit 0
def test_no_cuda_one_line(tmp_path):
    out = tmp_path/'gpu_check.json'
    r = subprocess.run([sys.executable, ROOT/'tools'/'gpu_check.py', '--out', out], capture_output=True, text=True,
                       env={**__import__('os').environ, 'CUDA_VISIBLE_DEVICES': ''}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count('\n') == 1 and 'no CUDA' in r.stdout and torch.__version__ in r.stdout, r.stdout
    assert not out.exists()


# ---------------------------------------------------------------- running checks, the table, the JSON, the exit status
def boom(): raise ValueError("boom\nsecond line")

def test_checks_table_json_exit(tmp_path, capsys):
    ran = []
    checks = {'a': lambda: ran.append('a') or ('pass', 'fine', {'x': 1.5, 'bad': float('nan')}),
              'raises': boom,
              'b': lambda: ran.append('b') or ('skip', 'needs 2 GPUs, found 1', {}),
              'c': lambda: ran.append('c') or ('fail', 'too far', {'rel_err': 0.5})}
    res = gpu_check.run_checks(checks)
    assert ran == ['a', 'b', 'c'] and [r['name'] for r in res] == list(checks)
    assert [r['status'] for r in res] == ['pass', 'fail', 'skip', 'fail']
    assert res[1]['message'] == 'ValueError: boom' and 'boom' in res[1]['traceback'] and 'def boom' in res[1]['traceback']
    assert all(r['seconds'] >= 0 for r in res) and res[0]['traceback'] is None
    out = tmp_path/'sub'/'gpu_check.json'
    assert gpu_check.report(res, out, torch=torch.__version__) == 1
    printed = capsys.readouterr().out
    rows = [l.split() for l in printed.splitlines()[1:5]]
    assert [r[:2] for r in rows] == [['a', 'pass'], ['raises', 'fail'], ['b', 'skip'], ['c', 'fail']], printed
    data = json.loads(out.read_text())                     # strict JSON: NaN written as null
    assert data['torch'] == torch.__version__ and [c['status'] for c in data['checks']] == ['pass', 'fail', 'skip', 'fail']
    assert data['checks'][0]['figures'] == {'x': 1.5, 'bad': None}
    assert gpu_check.report([r for r in res if r['status'] != 'fail'], tmp_path/'ok.json') == 0


def test_bad_status_is_a_fail():
    r = gpu_check.run_check('odd', lambda: ('maybe', '', {}))
    assert r['status'] == 'fail' and "status 'maybe'" in r['message']


def test_main_runs_each_check_in_a_child(tmp_path, monkeypatch, capsys):
    "`main` as on a GPU (CUDA faked in this process only): each check in a child, the table, the JSON, the exit status."
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')         # the child sees no GPU: nccl skips (0 GPUs) on any machine
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda d=None: 'Fake GPU')
    out = tmp_path/'gpu_check.json'
    assert gpu_check.main(['--only', 'nccl', '--device', 'cpu', '--out', str(out)]) == 0
    data = json.loads(out.read_text())
    assert data['device_name'] == 'Fake GPU' and data['torch'] == torch.__version__ and len(data['checks']) == 1
    nccl = data['checks'][0]
    assert (nccl['name'], nccl['status'], nccl['message']) == ('nccl', 'skip', 'needs 2 GPUs, found 0')
    assert nccl['figures'] == {'gpus': 0} and nccl['seconds'] > 0
    assert re.search(r'^nccl +skip +[\d.]+ +needs 2 GPUs, found 0$', capsys.readouterr().out, re.M)


def test_child_past_its_budget_fails():
    r = gpu_check.run_in_child('nccl', 'cpu', 0.2)
    assert r['status'] == 'fail' and 'timed out after its budget' in r['message'] and r['seconds'] < 30, r


def test_run_command_kills_on_timeout():
    r = gpu_check.run_command([sys.executable, '-c', 'import time; print("started", flush=True); time.sleep(60)'], 1.5)
    assert r['returncode'] is None and r['seconds'] < 30 and 'started' in r['output']
    r = gpu_check.run_command([sys.executable, '-c', 'print("hi"); raise SystemExit(3)'], 30)
    assert r['returncode'] == 3 and r['output'].strip() == 'hi'


# ---------------------------------------------------------------- the verdicts of the command checks, faked commands
def fake_run(results):
    "A stand-in for `run_command` answering from `results` (cmd -> dict) and recording the commands."
    calls = []
    def run(cmd, timeout, capture=True):
        calls.append([str(c) for c in cmd])
        return {'returncode': 0, 'seconds': 1., 'output': '', **results(calls[-1])}
    run.calls = calls
    return run


@pytest.mark.parametrize('rc,output,status,msg', [
    (5, 'no tests ran in 0.1s\n', 'skip', 'no test marked gpu was collected'),
    (0, '..\n2 passed, 300 deselected in 3.0s\n', 'pass', '2 passed, 300 deselected in 3.0s'),
    (1, 'F.\n=== 1 failed, 1 passed in 3.0s ===\n', 'fail', '1 failed, 1 passed in 3.0s'),
    (None, 'F', 'fail', 'timed out')])
def test_gpu_tests_verdict(monkeypatch, rc, output, status, msg):
    run = fake_run(lambda cmd: {'returncode': rc, 'output': output})
    monkeypatch.setattr(gpu_check, 'run_command', run)
    st, m, figs = gpu_check.check_gpu_tests('cuda', 60)
    assert st == status and msg in m and figs['returncode'] == rc
    assert run.calls[0][1:5] == ['-m', 'pytest', '-m', 'gpu']


def test_notebooks_verdict(monkeypatch):
    monkeypatch.setattr(gpu_check, 'cuda_notebooks', lambda: [ROOT/'nbs'/'a.ipynb', ROOT/'nbs'/'b.ipynb'])
    run = fake_run(lambda cmd: {'returncode': None if cmd[-1].endswith('b.ipynb') else 0, 'output': 'cell 3 ...'})
    monkeypatch.setattr(gpu_check, 'run_command', run)
    st, m, figs = gpu_check.check_notebooks('cuda', 100)
    assert st == 'fail' and m == '1 of 2 notebooks passed: b.ipynb timed out', m
    assert figs['a.ipynb']['status'] == 'pass' and figs['b.ipynb']['tail'] == 'cell 3 ...'
    assert sorted(c[-1] for c in run.calls) == ['nbs/a.ipynb', 'nbs/b.ipynb']
    assert all(Path(c[0]).name == 'nbdev-test' and c[1:3] == ['--flags', 'cuda'] for c in run.calls)
    monkeypatch.setattr(gpu_check, 'cuda_notebooks', lambda: [])
    assert gpu_check.check_notebooks('cuda', 100)[0] == 'skip'


class FakeSuite:
    def configs(self): return [type('C', (), {'key': k})() for k in ('k1', 'k2')]

def test_paper_smoke_verdict(monkeypatch):
    config = types.ModuleType('silhouette_nb.config')      # a stand-in: the real one imports fastai (seconds)
    monkeypatch.setitem(sys.modules, 'silhouette_nb.config', config)
    config.SUITES = {'quick': FakeSuite()}
    st, m, _ = gpu_check.check_paper_smoke('cuda', 60)
    assert st == 'skip' and "no 'paper-smoke'" in m
    config.SUITES['paper-smoke'] = FakeSuite()
    def writes(keys):
        def results(cmd):
            out = Path(cmd[cmd.index('--out') + 1])
            (out/'results.jsonl').write_text(''.join(json.dumps({'key': k, 'dataset': 'cifar10', 'objective': 'ce',
                'top1': 0.5, 'images_per_second': 900., 'syncs_per_step': 0, 'config': {}}) + '\n' for k in keys))
            return {}
        return results
    run = fake_run(writes(['k1', 'k2']))
    monkeypatch.setattr(gpu_check, 'run_command', run)
    st, m, figs = gpu_check.check_paper_smoke('cuda', 60, data_path='/data')
    assert st == 'pass' and '2 runs' in m and 'images_per_second, syncs_per_step' in m, m
    assert figs['runs'][0] == {'dataset': 'cifar10', 'objective': 'ce', 'top1': 0.5, 'images_per_second': 900., 'syncs_per_step': 0}
    assert run.calls[0][1:5] == ['suite', 'paper-smoke', '--device', 'cuda'] and run.calls[0][-2:] == ['--data-path', '/data']
    monkeypatch.setattr(gpu_check, 'run_command', fake_run(writes(['k1'])))
    st, m, _ = gpu_check.check_paper_smoke('cuda', 60)
    assert st == 'fail' and '1 of 2 runs recorded' in m


def test_nccl_skips_below_two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    assert gpu_check.check_nccl('cuda', 30)[:2] == ('skip', 'needs 2 GPUs, found 1')


def test_global_batch_errors_on_gloo():
    "The cases of the nccl check, on 2 CPU processes: the gathered losses equal one process's to ~1e-16."
    errors = gpu_check.nccl_errors(backend='gloo')
    assert len(errors) == 6 and all(0 <= max(e.values()) < 1e-10 for e in errors.values()), errors


# ---------------------------------------------------------------- autocast on the CPU
def test_autocast_errors_cpu():
    from silhouette_nb.objectives import OBJECTIVES
    dtypes = (torch.float16, torch.bfloat16)
    rows = gpu_check.autocast_errors('cpu', dtypes)
    names = list(gpu_check._autocast_cases(32, 4))
    assert [(r['loss'], r['dtype']) for r in rows] == [(n, d) for n in names for d in ('float16', 'bfloat16')]
    assert {f'SoftSilhouetteLoss {d}' for d in ('euclidean', 'sqeuclidean', 'cosine')} <= set(names)
    assert {'SupConLoss one view', 'SupConLoss two views', 'GaussianCOREL', 'CosineCOREL'} <= set(names)
    assert {f'objective {s}' for s in OBJECTIVES} <= set(names)
    for r in rows:
        assert math.isfinite(r['reference']), r
        if r['error'] is None:
            assert math.isfinite(r['value']) and math.isfinite(r['rel_err']) and isinstance(r['grad_finite'], bool), r
            assert r['ok'] == (r['rel_err'] <= gpu_check.TOL and r['grad_finite']), r
        else:
            assert isinstance(r['error'], str) and r['error'] and not r['ok'] and r['value'] is None, r


def test_autocast_check_verdict(capsys):
    st, msg, figs = gpu_check.check_autocast('cpu', 30)
    rows = figs['rows']
    assert st == ('pass' if all(r['ok'] for r in rows) else 'fail') and '\n' not in msg
    assert msg.startswith(f"{sum(r['ok'] for r in rows)} of {len(rows)} loss x dtype within 0.01 relative")
    assert len(capsys.readouterr().out.splitlines()) == len(rows)


class RaisesUnderAutocast(torch.nn.Module):
    def forward(self, f, y):
        if torch.is_autocast_enabled(f.device.type): raise RuntimeError("index_add_(): self (Float) and source (Half)")
        return f.float().pow(2).mean()

class DriftsUnderAutocast(torch.nn.Module):
    def forward(self, f, y): return f.float().pow(2).mean() * (1.5 if torch.is_autocast_enabled(f.device.type) else 1.)

class Steady(torch.nn.Module):
    def forward(self, f, y): return f.float().pow(2).mean()

def test_autocast_errors_records_failures(monkeypatch):
    "A loss that raises or drifts under autocast is a recorded failure; the other losses still run."
    monkeypatch.setattr(gpu_check, '_autocast_cases', lambda dim, n_classes: {
        'raises': (RaisesUnderAutocast, 1, 'loss'), 'drifts': (DriftsUnderAutocast, 1, 'loss'), 'steady': (Steady, 2, 'loss')})
    rows = {r['loss']: r for r in gpu_check.autocast_errors('cpu', (torch.bfloat16,))}
    assert rows['raises']['error'] == 'RuntimeError: index_add_(): self (Float) and source (Half)' and not rows['raises']['ok']
    assert rows['drifts']['error'] is None and rows['drifts']['rel_err'] == pytest.approx(0.5, rel=1e-2) and not rows['drifts']['ok']
    assert rows['drifts']['grad_finite'] is True
    assert rows['steady']['ok'] and 0 < rows['steady']['rel_err'] < 1e-2   # the inputs rounded to bfloat16, not more


# ---------------------------------------------------------------- the loss benchmark on the CPU
def test_loss_benchmark_cpu():
    b = gpu_check.loss_benchmark('cpu', sizes=(48, 64), repeats=2, warmup=1, n_classes=8, chunk_size=16)
    assert (b['device'], b['dim'], b['chunk_size']) == ('cpu', 128, 16)
    paths = [(r['B'], r['path']) for r in b['rows']]
    every = ['sil', 'supcon', 'pml supcon', 'floor']
    assert paths == [(48, p) for p in every] + [(64, p) for p in every + ['sil chunked', 'supcon chunked']]
    for r in b['rows']:
        assert isinstance(r['ms'], float) and 0 < r['ms'] < 1e4 and r['peak_mib'] is None and math.isfinite(r['loss']), r
    loss = {(r['B'], r['path']): r['loss'] for r in b['rows']}
    assert loss[64, 'supcon'] == pytest.approx(loss[64, 'pml supcon'], rel=1e-5)   # the same loss, measured side by side
    assert loss[64, 'sil chunked'] == pytest.approx(loss[64, 'sil'], rel=1e-5)
    assert loss[64, 'supcon chunked'] == pytest.approx(loss[64, 'supcon'], rel=1e-5)
    assert [r['B'] for r in b['ratios']] == [48, 64]
    for r in b['ratios']:
        assert set(r) == {'B', 'sil / pml', 'supcon / pml', 'sil / floor', 'supcon / floor'}
        assert all(v > 0 and math.isfinite(v) for k, v in r.items() if k != 'B')
    text = gpu_check.format_benchmark(b)
    assert 'B=64: sil / pml' in text and re.search(r'64 \| sil chunked +\| +[\d.]+ \| +- \|', text), text


def test_bench_oom_is_recorded(monkeypatch):
    "An out-of-memory path is recorded as 'oom' and left out of the timing; the others are measured."
    def oom(x, y): raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
    paths = gpu_check._bench_paths(16)
    monkeypatch.setattr(gpu_check, '_bench_paths', lambda c: {**paths, 'pml supcon': (lambda: oom, True)})
    b = gpu_check.loss_benchmark('cpu', sizes=(32,), repeats=1, warmup=1, n_classes=4, chunk_size=16)
    pml = next(r for r in b['rows'] if r['path'] == 'pml supcon')
    assert pml['ms'] == pml['peak_mib'] == 'oom' and b['ratios'][0]['sil / pml'] is None
    assert b['ratios'][0]['sil / floor'] > 0


# ---------------------------------------------------------------- the notebooks with `#| cuda` cells
def nb(path, cells):
    path.write_text(json.dumps({'cells': [{'cell_type': t, 'metadata': {}, 'source': s, **({'outputs': [], 'execution_count': None} if t == 'code' else {})}
                                          for t, s in cells], 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}))

def test_cuda_notebooks(tmp_path):
    nb(tmp_path/'01_a.ipynb', [('code', 'x = 1'), ('code', '#| cuda\ny = x.cuda()')])
    nb(tmp_path/'02_b.ipynb', [('code', '#| slow\nz = 2'), ('markdown', '#| cuda is a flag'), ('code', 'w = 1  #| cuda')])
    nb(tmp_path/'03_c.ipynb', [('code', '#| hide\n#|cuda\nq = 3')])
    assert gpu_check.cuda_notebooks(tmp_path) == [tmp_path/'01_a.ipynb', tmp_path/'03_c.ipynb']
    # the project's own: those whose source has a code cell starting with a `#| cuda` line among its directives
    flagged = lambda c: c['cell_type'] == 'code' and re.match(r'(#\|[^\n]*\n)*#\|\s*cuda\b', ''.join(c['source']))
    expected = [p for p in sorted((ROOT/'nbs').glob('*.ipynb')) if any(flagged(c) for c in json.loads(p.read_text())['cells'])]
    assert expected and gpu_check.cuda_notebooks() == expected


# ---------------------------------------------------------------- on a GPU (pytest -m gpu)
@pytest.mark.gpu
@cuda
def test_autocast_errors_cuda():
    rows = gpu_check.autocast_errors('cuda', (torch.float16, torch.bfloat16))
    assert len(rows) == 2 * len(gpu_check._autocast_cases(32, 4))
    assert all(math.isfinite(r['reference']) and (r['error'] is not None or math.isfinite(r['value'])) for r in rows)


@pytest.mark.gpu
@cuda
def test_loss_benchmark_cuda():
    b = gpu_check.loss_benchmark('cuda', sizes=(256,), repeats=2, warmup=1, n_classes=10, chunk_size=64)
    for r in b['rows']:
        assert isinstance(r['ms'], float) and r['ms'] > 0 and isinstance(r['peak_mib'], float) and r['peak_mib'] > 0, r
