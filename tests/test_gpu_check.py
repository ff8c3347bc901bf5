"""`tools/gpu_check.py` (`make gpu-check`) on the CPU: the one-line exit without CUDA, running checks (a check that
raises is a fail and the others run), the table, the JSON and the exit status, a check's child process and its time
budget, each check's verdict from faked command results, `autocast_errors` and `loss_benchmark` on the CPU, the
`#| cuda` notebook discovery, and the global-batch errors on gloo. The GPU-marked tests at the end run the two
measuring functions on CUDA (`pytest -m gpu`, which `make gpu-check` runs).
"""
import importlib.metadata, importlib.util, json, math, os, re, signal, subprocess, sys, time, types
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


def test_make_gpu_check_without_venv_or_cuda(tmp_path):
    "`make gpu-check` with no venv runs the machine's python (here this one): without CUDA, one line and exit 0."
    r = subprocess.run(['make', '-s', '--no-print-directory', 'gpu-check', f'PYTHON={sys.executable}', f'VENV={tmp_path}/none'],
                       cwd=ROOT, capture_output=True, text=True, env={**__import__('os').environ, 'CUDA_VISIBLE_DEVICES': ''}, timeout=120)
    assert r.returncode == 0 and r.stdout.count('\n') == 1 and 'no CUDA device' in r.stdout, r.stdout + r.stderr


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
    monkeypatch.setenv('OUT', str(tmp_path))                 # $OUT: where the device machine's files come back from
    assert gpu_check.main(['--only', 'nccl']) == 0
    out = tmp_path/'gpu_check.json'
    data = json.loads(out.read_text())
    md = (tmp_path/'gpu_check.md').read_text()
    assert '| nccl | skip |' in md and 'device_name Fake GPU' in md, md
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


def test_run_command_kills_grandchildren_in_their_own_sessions():
    "A check's own commands run in sessions of their own: killing the check kills them too (nothing keeps the GPU)."
    code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
            "start_new_session=True); print(p.pid, flush=True); time.sleep(60)")
    r = gpu_check.run_command([sys.executable, '-c', code], 3)
    pid = int(r['output'].split()[0])
    assert r['returncode'] is None
    for _ in range(50):
        try: os.kill(pid, 0); state = Path(f'/proc/{pid}/stat').read_text().split()[2]
        except (ProcessLookupError, FileNotFoundError): break
        if state == 'Z': break                             # killed, waiting for its (new) parent to reap it
        time.sleep(0.1)
    else: raise AssertionError(f"grandchild {pid} still running")


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
    assert run.calls[0][-2:] == ['tests/test_gpu_check.py', 'tests/test_gpu_path.py']   # only the files that mark tests gpu


def test_notebooks_verdict(monkeypatch):
    monkeypatch.setattr(gpu_check, 'cuda_notebooks', lambda: [ROOT/'nbs'/'a.ipynb', ROOT/'nbs'/'b.ipynb'])
    run = fake_run(lambda cmd: {'returncode': None if cmd[-1].endswith('b.ipynb') else 0, 'output': 'cell 3 ...'})
    monkeypatch.setattr(gpu_check, 'run_command', run)
    st, m, figs = gpu_check.check_notebooks('cuda', 100)
    assert st == 'fail' and m == '1 of 2 notebooks passed: b.ipynb timed out', m
    assert figs['a.ipynb']['status'] == 'pass' and figs['b.ipynb']['tail'] == 'cell 3 ...'
    assert sorted(c[-1] for c in run.calls) == ['nbs/a.ipynb', 'nbs/b.ipynb']
    assert all(c[0] == sys.executable and c[2:6] == ['--entry', 'nbdev-test', '--flags', 'cuda'] for c in run.calls)   # no console script
    monkeypatch.setattr(gpu_check, 'cuda_notebooks', lambda: [])
    assert gpu_check.check_notebooks('cuda', 100)[0] == 'skip'


class FakeSuite:
    def configs(self): return [type('C', (), {'key': k, 'objective': o})() for k, o in (('k1', 'ce'), ('k2', 'supcon'))]

def test_paper_smoke_verdict(monkeypatch):
    config = types.ModuleType('silhouette_nb.config')      # a stand-in: the real one imports fastai (seconds)
    monkeypatch.setitem(sys.modules, 'silhouette_nb.config', config)
    config.SUITES = {'quick': FakeSuite()}
    st, m, _ = gpu_check.check_paper_smoke('cuda', 60)
    assert st == 'skip' and "no 'paper-smoke'" in m
    config.SUITES['paper-smoke'] = FakeSuite()
    def writes(keys):
        def results(cmd):
            out = Path(cmd[cmd.index('--out') + 1]); out.mkdir()
            (out/'results.jsonl').write_text(''.join(json.dumps({'key': k, 'dataset': 'cifar10', 'objective': 'ce',
                'top1': 0.5, 'sec_per_epoch': 2.0, 'config': {'n_train': 1024}}) + '\n' for k in keys))
            Path(cmd[cmd.index('--syncs') + 1]).write_text(json.dumps({'key': 'k1', 'syncs_per_step': 3.0, 'ops': {'aten.nonzero': 3.0}}) + '\n')
            return {}
        return results
    run = fake_run(writes(['k1', 'k2']))
    monkeypatch.setattr(gpu_check, 'run_command', run)
    st, m, figs = gpu_check.check_paper_smoke('cuda', 60, {'data_path': '/data'})
    assert st == 'pass' and m.startswith('2 runs in 1 s; median images/s CIFAR-10 512, Caltech-101 -; host syncs/step 3.0'), m
    assert 'fixture' not in m and figs['fixtures'] is None
    assert figs['runs'][0] == {'dataset': 'cifar10', 'objective': 'ce', 'top1': 0.5, 'sec_per_epoch': 2.0,
                               'images_per_second': 512.0, 'syncs_per_step': 3.0, 'sync_ops': {'aten.nonzero': 3.0}}
    assert figs['runs'][1]['syncs_per_step'] is None
    cmd = run.calls[0]
    assert cmd[0] == sys.executable and cmd[2:4] == ['--entry', 'silhouette-nb'] and '--fixtures' not in cmd
    i = cmd.index('suite')
    assert cmd[i:i + 4] == ['suite', 'paper-smoke', '--device', 'cuda'] and cmd[cmd.index('--data-path') + 1] == '/data'
    monkeypatch.setattr(gpu_check, 'run_command', fake_run(writes(['k1'])))
    st, m, _ = gpu_check.check_paper_smoke('cuda', 60, {'data_path': '/data'})
    assert st == 'fail' and '1 of 2 runs recorded' in m
    # without --data-path: the fixtures are written (tiny here) and torchvision pointed at them; --tiny: 2 objectives
    run = fake_run(writes(['k2']))
    monkeypatch.setattr(gpu_check, 'run_command', run)
    st, m, figs = gpu_check.check_paper_smoke('cuda', 60, {'tiny': True})
    assert st == 'pass' and m.endswith('fixture data: accuracies mean nothing'), m
    assert figs['fixtures']['cifar_train'] == 40 and 'mean nothing' in figs['note']
    cmd = run.calls[0]
    assert cmd[cmd.index('--fixtures') + 1] == cmd[cmd.index('--data-path') + 1] and cmd[-len(gpu_check.TINY_SMOKE):] == gpu_check.TINY_SMOKE


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


# ---------------------------------------------------------------- set-up from the bundle, SIGTERM, the paper fixtures
def test_gpu_test_files():
    assert [p.name for p in gpu_check.gpu_test_files()] == ['test_gpu_check.py', 'test_gpu_path.py']


def test_install_bundle_errors(tmp_path):
    "A missing bundle, one for another Python and a wheel that differs from its manifest: one SetupError each, naming it."
    with pytest.raises(gpu_check.SetupError, match='there is no bundle at .*make gpu-bundle'):
        gpu_check.install_bundle(tmp_path/'none')
    whl = tmp_path/'a-1.0-py3-none-any.whl'; whl.write_bytes(b'not a wheel')
    man = {'python_version': '2.7', 'wheels': [{'file': whl.name, 'sha256': '0' * 64}], 'total_mib': 0}
    (tmp_path/'manifest.json').write_text(json.dumps(man))
    with pytest.raises(gpu_check.SetupError, match=r'is for Python 2\.7, this is 3\.'):
        gpu_check.install_bundle(tmp_path)
    (tmp_path/'manifest.json').write_text(json.dumps({**man, 'python_version': '.'.join(map(str, sys.version_info[:2]))}))
    with pytest.raises(gpu_check.SetupError, match="a-1.0-py3-none-any.whl differs from the manifest's sha256"):
        gpu_check.install_bundle(tmp_path)


def test_version_ok():
    assert gpu_check._version_ok('torch', ['torch>=2.1 (by silhouette-nb)']) == []
    assert gpu_check._version_ok('torch', ['torch>=99 (by x)', 'torch; extra == "dev" (by y)']) == [
        f"torch {importlib.metadata.version('torch')} does not meet torch>=99 (by x)"]
    assert 'is not installed' in gpu_check._version_ok('no-such-package-here', ['no-such-package-here (by z)'])[0]


def test_markdown_tables(tmp_path):
    res = [{'name': 'bench', 'status': 'pass', 'seconds': 1.0, 'message': 'a | b', 'traceback': None,
            'figures': {'dim': 8, 'n_classes': 2, 'device': 'cpu', 'rows': [{'B': 4, 'path': 'sil', 'ms': 1.5, 'peak_mib': None, 'loss': 0.25}]}},
           {'name': 'paper-smoke', 'status': 'pass', 'seconds': 2.0, 'message': 'ok', 'traceback': None,
            'figures': {'note': 'fixture data', 'runs': [{'dataset': 'cifar10', 'objective': 'ce', 'images_per_second': 900.4,
                                                         'syncs_per_step': 2.0, 'sec_per_epoch': 1.0, 'peak_mem_mib': None, 'top1': 0.1}]}}]
    gpu_check.write_results(res, tmp_path/'g.json', torch='x', device_name='Fake', setup={'seconds': 3.2})
    md = (tmp_path/'g.md').read_text()
    assert 'device_name Fake, torch x; set-up 3 s' in md and '| bench | pass | 1.0 | a \\| b |' in md
    assert '| 4 | sil | 1.500 | - | 0.2500 |' in md and '## paper-smoke: fixture data' in md
    assert '| cifar10 | ce | 900 | 2.0 | 1.00 | - | 0.100 |' in md
    assert json.loads((tmp_path/'g.json').read_text())['checks'][0]['message'] == 'a | b'


def test_sigterm_prints_the_table_so_far(tmp_path):
    "SIGTERM in the middle of a check: its process group is killed, the table and the JSON say what did not run."
    p = subprocess.Popen([sys.executable, ROOT/'tools'/'gpu_check.py', '--device', 'cpu', '--tiny', '--only', 'nccl', 'paper-smoke',
                          'gpu-tests', '--out', tmp_path/'g.json'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = ''
    for line in p.stdout:                                    # wait for paper-smoke to start, then stop everything
        out += line
        if line.startswith('--- paper-smoke (budget'): time.sleep(2); p.send_signal(signal.SIGTERM); break
    out += p.communicate(timeout=60)[0]
    assert p.returncode == 1, out
    data = json.loads((tmp_path/'g.json').read_text())
    assert [(c['name'], c['status']) for c in data['checks']] == [('nccl', 'skip'), ('paper-smoke', 'fail'), ('gpu-tests', 'fail')]
    assert all(c['message'] == 'not run: stopped by SIGTERM' for c in data['checks'][1:]), data
    assert re.search(r'^paper-smoke +fail +0\.0 +not run: stopped by SIGTERM$', out, re.M), out
    assert '| gpu-tests | fail | 0.0 | not run: stopped by SIGTERM |' in (tmp_path/'g.md').read_text()


def test_paper_fixtures_tiny_through_torchvision(tmp_path):
    "The fixtures as the suite reads them: torchvision's CIFAR-10 (its MD5 checks pointed at them) and Caltech-101."
    from silhouette_nb.data import image_dsets
    pf = gpu_check._load_tool('paper_fixtures')
    info = pf.write_paper_fixtures(tmp_path, tiny=True)
    import torchvision.datasets as tvd
    saved = tvd.CIFAR10.train_list, tvd.CIFAR10.test_list, tvd.CIFAR10.meta
    try:
        with pytest.raises(FileNotFoundError, match='cifar10 not found'): image_dsets('cifar10', tmp_path)   # the real MD5s
        pf.point_torchvision_at(tmp_path)
        tr, va = image_dsets('cifar10', tmp_path)
    finally: tvd.CIFAR10.train_list, tvd.CIFAR10.test_list, tvd.CIFAR10.meta = saved
    assert (len(tr), len(va), tr.c) == (info['cifar_train'], info['cifar_test'], 10) and tr[0][0].size == (32, 32)
    tr, va = image_dsets('caltech101', tmp_path)
    assert len(tr) + len(va) == 3 * 10 and tr.c == 3 and tr[0][0].size == (48, 40)   # BACKGROUND_Google left out


def test_paper_fixture_sizes_fit_the_suite():
    "The full fixtures hold what paper-smoke takes: n_train from the training split, n_valid from the validation split."
    from silhouette_nb.config import PAPER_SMOKE
    pf = gpu_check._load_tool('paper_fixtures')
    s = pf.SIZES['full']
    caltech = s['caltech_classes'] * s['caltech_per_class']
    have = {'cifar10': (s['cifar_train'], s['cifar_test']), 'caltech101': (caltech - round(0.2 * caltech), round(0.2 * caltech))}
    for c in PAPER_SMOKE.configs():
        assert c.n_train <= have[c.dataset][0] and c.n_valid <= have[c.dataset][1], (c.dataset, c.n_train, c.n_valid)
    assert s['caltech_classes'] == 101 and {c.dataset for c in PAPER_SMOKE.configs()} == set(have)


# ---------------------------------------------------------------- the bundle: closure, offline install, the whole rehearsal
gpu_bundle = gpu_check._load_tool('gpu_bundle')
PY = '.'.join(map(str, sys.version_info[:2]))


def test_closure_is_derived():
    "What the GPU machine lacks, from the installed metadata: fastai's and fastprogress's needs, none of what it has."
    bundle, gpu_req = gpu_bundle.closure('3.12')
    assert {'fastai', 'fastcore', 'fastprogress', 'fasttransform', 'fastdownload', 'plum-dispatch', 'pytorch-metric-learning',
            'nbdev', 'execnb', 'python-fasthtml', 'starlette', 'ipython'} <= set(bundle)
    assert 'fastprogress' in bundle['python-fasthtml']['required_by'] and 'fastai' in bundle['fastprogress']['required_by']
    assert not set(bundle) & {gpu_bundle.norm(n) for n in gpu_bundle.GPU_HAS} and 'spacy' not in bundle
    assert {'torch', 'torchvision', 'numpy', 'typing-extensions'} <= set(gpu_req)
    assert any(r.startswith('torch<3,>=1.10 (by fastai)') for r in gpu_req['torch'])
    assert gpu_bundle.full_version('3.12') == '3.12.3' and gpu_bundle.full_version(PY) == '.'.join(map(str, sys.version_info[:3]))


@pytest.fixture(scope='module')
def bundle():
    "The bundle for this Python, built (or completed) in .gpu-bundle/ from PyPI: its manifest."
    try: return gpu_bundle.build(PY)
    except SystemExit as e:
        if os.environ.get('CI'): raise          # CI reaches PyPI: a bundle that cannot be built there is a failure
        pytest.skip(f"the bundle cannot be built here (no PyPI?): {str(e)[:300]}")

@pytest.fixture(scope='module')
def offline_python(tmp_path_factory):
    "A fresh venv with only the GPU machine's packages (linked from this one), and the environment of a machine without network."
    py = gpu_bundle.offline_venv(tmp_path_factory.mktemp('gpu-machine')/'venv')
    env = {'HOME': os.environ.get('HOME', '/tmp'), 'PATH': '/usr/bin:/bin', 'PIP_CONFIG_FILE': os.devnull, 'PIP_NO_INDEX': '1',
           'MPLBACKEND': 'Agg', 'PYTHONUNBUFFERED': '1'}
    offline = ['unshare', '-n'] if subprocess.run(['unshare', '-n', 'true'], capture_output=True).returncode == 0 else []
    return py, env, offline

def offline_run(offline_python, args, cwd, timeout, **env):
    py, base, offline = offline_python
    return subprocess.run(offline + [str(py), *map(str, args)], cwd=cwd, env={**base, **env}, capture_output=True, text=True, timeout=timeout)


def test_bundle_size_and_manifest(bundle):
    assert bundle['total_bytes'] < 40 * 2**20 and bundle['python_version'] == PY
    names = {w['name'] for w in bundle['wheels']}
    assert {'fastai', 'plum-dispatch', 'pytorch-metric-learning', 'nbdev'} <= names and not names & {'torch', 'numpy', 'spacy'}
    for w in bundle['wheels']:
        f = gpu_bundle.BUNDLE/f"cp{PY.replace('.', '')}"/w['file']
        assert f.stat().st_size == w['bytes'] and len(w['sha256']) == 64 and w['required_by'], w


@pytest.mark.slow
def test_bundle_installs_offline(bundle, offline_python, tmp_path):
    "In the stand-in GPU machine, fastai and the rest are missing; after `pip install --no-index` of the bundle they import."
    imports = 'import silhouette_nb.learner, silhouette_nb.pml, silhouette_nb.cli, nbdev.test, execnb.shell'
    check = "import importlib.util as u; print(sorted(m for m in ('fastai', 'fastcore', 'pytorch_metric_learning', 'nbdev', 'plum', 'execnb', 'IPython') if u.find_spec(m)))"
    r = offline_run(offline_python, ['-c', 'import torch, torchvision, numpy, scipy, sklearn, matplotlib, pandas, pytest; ' + check], tmp_path, 300)
    assert r.returncode == 0 and r.stdout.strip() == '[]', r.stdout + r.stderr   # only the GPU machine's packages
    folder = gpu_bundle.BUNDLE/f"cp{PY.replace('.', '')}"
    r = offline_run(offline_python, ['-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--target', tmp_path/'site',
                                     *sorted(folder.glob('*.whl'))], tmp_path, 300)
    assert r.returncode == 0, r.stderr
    r = offline_run(offline_python, ['-c', imports + '; print(silhouette_nb.__file__)'], tmp_path, 300,
                    PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path/'site'}")
    assert r.returncode == 0 and r.stdout.strip() == str(ROOT/'silhouette_nb'/'__init__.py'), r.stdout + r.stderr


TINY_NB = {'cells': [{'cell_type': 'code', 'execution_count': None, 'id': 'c1', 'metadata': {}, 'outputs': [],
                      'source': 'import torch\nfrom silhouette_nb.silhouette import SoftSilhouetteLoss'},
                     {'cell_type': 'code', 'execution_count': None, 'id': 'c2', 'metadata': {}, 'outputs': [],
                      'source': '#| cuda\nx, y = torch.randn(8, 4), torch.arange(8) % 2\nassert SoftSilhouetteLoss()(x, y).isfinite()'}],
           'metadata': {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}}, 'nbformat': 4, 'nbformat_minor': 5}

@pytest.mark.slow
def test_rehearsal_from_the_bundle_alone(bundle, offline_python, tmp_path):
    """The whole `gpu-check` on the CPU (`--device cpu --tiny`) as on the GPU machine: its python with only that
    machine's packages, no network, no .venv, the bundle installed by the check itself; every check reached, the
    table printed, JSON and markdown in $OUT. (The notebooks check runs a small notebook with a `#| cuda` cell.)"""
    (tmp_path/'tiny.ipynb').write_text(json.dumps(TINY_NB))
    out = tmp_path/'out'; out.mkdir()
    r = offline_run(offline_python, [ROOT/'tools'/'gpu_check.py', '--device', 'cpu', '--tiny', '--time-scale', '4',
                                     '--notebooks', tmp_path/'tiny.ipynb'], ROOT, 4 * gpu_check.TOTAL + 120, OUT=str(out), TMPDIR=str(tmp_path))
    log = r.stdout + r.stderr
    assert f"wheels ({bundle['total_mib']:.1f} MiB) installed offline" in log, log[-3000:]
    data = json.loads((out/'gpu_check.json').read_text())
    got = {c['name']: c for c in data['checks']}
    assert list(got) == list(gpu_check.CHECKS), log[-3000:]
    assert {n: c['status'] for n, c in got.items()} == {'autocast': 'pass', 'bench': 'pass', 'paper-smoke': 'pass',
                                                       'notebooks': 'pass', 'gpu-tests': 'pass', 'nccl': 'skip'}, \
        {n: (c['message'], (c['figures'] or {}).get('tail')) for n, c in got.items()}
    assert r.returncode == 0 and data['setup']['bundle'] and data['setup']['unmet'] == [], data['setup']
    runs = got['paper-smoke']['figures']['runs']
    assert len(runs) == 4 and all(x['images_per_second'] > 0 and x['syncs_per_step'] is not None for x in runs), runs
    assert 'skipped' in got['gpu-tests']['message']                    # collected from the bundle, skipped without CUDA
    md = (out/'gpu_check.md').read_text()
    assert all(f'| {n} | ' in md for n in gpu_check.CHECKS) and 'accuracies of these runs mean nothing' in md
    assert re.search(r'^check +status +seconds +message$', r.stdout, re.M)
