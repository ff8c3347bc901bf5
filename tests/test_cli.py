"""The `silhouette-nb` command line: help and argument errors answer in a process that cannot import torch; sweeps,
TOML run and suite files and `--dry-run`; the old option names; what `run` and `suite` print while they work.
"""
import os, subprocess, sys, time, warnings
from pathlib import Path

import pytest
import torch

from silhouette_nb.cli import main
from silhouette_nb.config import RunConfig
from silhouette_nb.runner import read_rows

NO_TORCH = "import sys; sys.modules['torch'] = None\nfrom silhouette_nb.cli import main\nsys.exit(main(sys.argv[1:]))"
ENV = {**os.environ, 'MPLBACKEND': 'Agg', 'PYTHONUNBUFFERED': '1'}
SMALL = ['--epochs', '1', '--n-train', '200', '--n-valid', '100', '--encoder', 'mlp', '--device', 'cpu']


@pytest.fixture(autouse=True)
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def no_torch(*args):
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, '-c', NO_TORCH, *args], capture_output=True, text=True, env=ENV, timeout=120)
    return p, time.perf_counter() - t0


@pytest.mark.parametrize('args', [['--help'], ['run', '--help'], ['suite', '--help'], ['report', '--help'], ['--version']])
def test_help_without_torch(args):
    p, secs = no_torch(*args)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith('usage: silhouette-nb') or p.stdout.startswith('silhouette_nb ')
    print(f"silhouette-nb {' '.join(args)}: {secs:.2f} s without torch")


@pytest.mark.parametrize('args, msg', [(['run', '--bogus'], 'unrecognized arguments: --bogus'),
                                       (['run', '--epochs'], 'expected one argument'),
                                       (['frobnicate'], 'invalid choice'),
                                       (['suite'], 'the following arguments are required: NAME')])
def test_argument_errors_without_torch(args, msg):
    p, _ = no_torch(*args)
    assert p.returncode == 2 and msg in p.stderr and 'Traceback' not in p.stderr, p.stderr


def test_sweep_dry_run(tmp_path, capsys):
    assert main(['run', '--set', 'sil_weight=0.5,1', '--set', 'lr=1e-3,3e-3', '--out', str(tmp_path), '--dry-run']) == 0
    out = capsys.readouterr().out
    assert '4 runs; 0 of them already in' in out and out.count('digits cnn ce+sil seed=0') == 4
    assert 'lr=0.001 sil_weight=0.5' in out and 'lr=0.003 sil_weight=1.0' in out
    assert not list(tmp_path.iterdir())                                         # a dry run writes nothing


def test_run_file_sweep_and_the_old_names(tmp_path, capsys):
    f = tmp_path/'exp.toml'
    f.write_text('dataset = "digits"\nencoder = "mlp"\nobjective = "ce+sil"\nepochs = 1\nn_train = 200\nn_valid = 100\n'
                 'lam = 0.5\nseed = [0, 1]\n')
    out = tmp_path/'out'
    assert main(['run', '--config', str(f), '--set', 'mu=0.2', '--device', 'cpu', '--no-bar', '--out', str(out),
                 '--save-model', 'none']) == 0
    rows = read_rows(out/'results.jsonl')
    assert [r['seed'] for r in rows] == [0, 1]
    assert {(r['config']['sil_weight'], r['config']['center_weight'], r['config']['supcon_weight']) for r in rows} == {(0.5, 0.5, 0.2)}
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        assert RunConfig(lam=0.5, mu=0.2, objective='ce+sil', encoder='mlp', epochs=1, n_train=200, n_valid=100).key == rows[0]['key']
    assert w and all(issubclass(x.category, DeprecationWarning) for x in w)


def test_toml_suite(tmp_path, capsys):
    f = tmp_path/'mine.toml'
    f.write_text('doc = "two objectives, a sweep of the silhouette weight"\nobjectives = ["ce", "ce+sil"]\nseeds = [0]\n'
                 '[common]\nepochs = 1\nn_train = 200\nn_valid = 100\n[datasets.digits]\nencoder = "mlp"\n'
                 '[per_objective."ce+sil"]\nsil_weight = [0.5, 1.0]\n')
    out = tmp_path/'out'
    assert main(['suite', str(f), '--out', str(out), '--dry-run']) == 0
    listed = capsys.readouterr().out
    assert '3 runs; 0 of them already in' in listed and 'sil_weight=0.5' in listed
    assert main(['suite', str(f), '--out', str(out), '--device', 'cpu', '--save-model', 'none']) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    starts = [i for i, l in enumerate(lines) if l.startswith('[')]
    assert [lines[i][:4] for i in starts] == ['[1/3', '[2/3', '[3/3']        # which run is starting, on its own line
    for i in starts:                                                          # the next line is that run's result
        run = lines[i].split('] ', 1)[1].split(' (key')[0]
        assert lines[i + 1].startswith(run + ': top1 '), text
    rows = read_rows(out/'results.jsonl')
    assert [r['suite'] for r in rows] == ['mine'] * 3
    assert main(['suite', str(f), '--out', str(out), '--dry-run']) == 0 and '3 of them already in' in capsys.readouterr().out


def test_run_shows_fastai_progress_unless_no_bar(tmp_path, capsys):
    args = ['run', '--dataset', 'digits', '--objective', 'ce', '--save-model', 'none'] + SMALL
    assert main(args + ['--out', str(tmp_path/'a')]) == 0
    assert 'train_loss' in capsys.readouterr().out                             # fastai's epoch table
    assert main(args + ['--out', str(tmp_path/'b'), '--no-bar']) == 0
    out = capsys.readouterr().out
    assert 'train_loss' not in out and 'digits mlp ce seed=0: top1' in out


def test_suite_errors_name_the_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as e: main(['suite', str(tmp_path/'none.toml'), '--dry-run'])
    assert e.value.code == 2 and 'no suite file at' in capsys.readouterr().err
    (tmp_path/'bad.toml').write_text('objectives = ["ce"]\n')
    with pytest.raises(SystemExit) as e: main(['suite', str(tmp_path/'bad.toml'), '--dry-run'])
    assert e.value.code == 2 and 'a suite needs `datasets`' in capsys.readouterr().err
