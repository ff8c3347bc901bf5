"""The core install (`pip install silhouette-nb`: torch and numpy only) gives the losses, the exact silhouette and the
distances; every other module says which extra it needs.

Each check runs in a fresh interpreter in which the extras' packages cannot be imported, as if they were not
installed: each name is set to None in `sys.modules`, Python's own mark for "not importable", so `import sklearn`
raises `ModuleNotFoundError` (an `ImportError`) and `importlib.util.find_spec('sklearn')` returns None. (A
`sys.meta_path` finder that raises `ImportError` from `find_spec` is not a faithful stand-in: torch's dynamo probes
`find_spec('pandas')`, `find_spec('scipy')`, ... when an optimizer is built, and expects None for a missing package.)
"""
import os, subprocess, sys, textwrap
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ('fastai', 'fastcore', 'fastprogress', 'sklearn', 'matplotlib', 'pytorch_metric_learning', 'torchvision',
           'mnist1d', 'scipy', 'pandas')
CORE = ('validation', 'process_group', 'distances', 'silhouette', 'supcon', 'heads', 'corel', 'objectives')
EXTRAS = {'pml': 'pml', 'learner': 'fastai', 'data': 'fastai', 'encoders': 'fastai', 'metrics': 'fastai',
          'runner': 'experiments', 'report': 'experiments', 'claims': 'experiments', 'cli': 'experiments', 'interpretation': 'fastai'}

PRELUDE = f"""
import sys
BLOCKED = {BLOCKED!r}
for name in BLOCKED: sys.modules[name] = None   # import raises ModuleNotFoundError, find_spec returns None
"""


def run_light(code, timeout=300):
    "Run `code` after the prelude in a fresh interpreter on this tree; (returncode, stdout + stderr)."
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]), 'OMP_NUM_THREADS': '1'}
    p = subprocess.run([sys.executable, '-c', PRELUDE + textwrap.dedent(code)], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=ROOT)
    return p.returncode, p.stdout + p.stderr


def test_the_blocker_blocks():
    rc, out = run_light("""
        import torch, numpy
        for m in BLOCKED:
            try: __import__(m)
            except ImportError: continue
            raise SystemExit(f'{m} was imported')
        print('ok')
    """)
    assert rc == 0 and 'ok' in out, out


@pytest.mark.parametrize('module', CORE)
def test_core_module_imports_without_extras(module):
    rc, out = run_light(f"""
        import silhouette_nb.{module}
        loaded = sorted(m for m in BLOCKED if sys.modules.get(m) is not None)
        assert not loaded, loaded
        print('ok')
    """)
    assert rc == 0 and 'ok' in out, out


def test_train_under_autocast_without_extras():
    "A few Adam steps of a linear encoder on clustered data with each loss, under CPU bfloat16 autocast."
    rc, out = run_light("""
        import torch
        from silhouette_nb.silhouette import SoftSilhouetteLoss, silhouette_score
        from silhouette_nb.supcon import SupConLoss
        torch.manual_seed(0); torch.set_num_threads(1)
        K, n, d = 4, 16, 12
        centres = 3 * torch.randn(K, d)
        y = torch.arange(K).repeat_interleave(n)
        x = centres[y] + torch.randn(K * n, d)
        for loss_fn in (SoftSilhouetteLoss(0.1), SupConLoss(0.1)):
            enc = torch.nn.Linear(d, 8)
            opt = torch.optim.Adam(enc.parameters(), 1e-2)
            losses = []
            for step in range(30):
                with torch.autocast('cpu', dtype=torch.bfloat16):
                    loss = loss_fn(enc(x), y)
                assert loss.dtype == torch.float32 and torch.isfinite(loss), (type(loss_fn).__name__, loss)
                opt.zero_grad(); loss.backward(); opt.step()
                losses.append(loss.item())
            assert losses[-1] < losses[0], (type(loss_fn).__name__, losses)
            with torch.no_grad(): print(type(loss_fn).__name__, round(losses[0], 4), round(losses[-1], 4), round(silhouette_score(enc(x), y).item(), 3))
        loaded = sorted(m for m in BLOCKED if sys.modules.get(m) is not None)
        assert not loaded, loaded
        print('ok')
    """)
    assert rc == 0 and 'ok' in out, out


@pytest.mark.parametrize('module,extra', EXTRAS.items())
def test_module_without_its_extra_names_it(module, extra):
    rc, out = run_light(f"""
        try: import silhouette_nb.{module}
        except ImportError as e: print('ImportError:', e)
        else: print('imported')
    """)
    assert f'pip install "silhouette-nb[{extra}]"' in out, out
