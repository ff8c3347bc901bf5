"""The runner loses nothing and refuses what cannot work before it trains: an output folder that cannot be written (a
read-only folder, an existing file), a full disk while writing a row (the row is printed, the list goes on, the exit
status says so), two processes on one results file (no run trained twice), bad runtime options (one error line, exit
status 2); identical rows from two processes; in a group of processes, one failure stops every process.
"""
import json, os, shutil, subprocess, sys, time
from pathlib import Path

import pytest
import torch

from silhouette_nb.cli import main
from silhouette_nb.config import QUICK, RunConfig
from silhouette_nb.process_group import launch
from silhouette_nb.runner import read_rows, scan_rows

SCRIPT = Path(sys.executable).parent/'silhouette-nb'
CLI = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, '-c', 'import sys; from silhouette_nb.cli import main; sys.exit(main())']
ENV = {**os.environ, 'MPLBACKEND': 'Agg', 'PYTHONUNBUFFERED': '1'}
SMALL = ['--set', 'epochs=1', '--set', 'n_train=200', '--set', 'n_valid=100', '--encoders', 'mlp']
RUN = ['run', '--dataset', 'digits', '--encoder', 'mlp', '--objective', 'ce+sil', '--epochs', '1', '--n-train', '200',
       '--n-valid', '100', '--device', 'cpu', '--no-bar']
TIMING = ('wall_s', 'train_s', 'eval_s', 'sec_per_epoch', 'peak_mem_mib', 'start_mem_mib', 'finished')


pytestmark = pytest.mark.usefixtures('restore_threads')   # tests/conftest.py


def untimed(row): return {k: v for k, v in row.items() if k not in TIMING}


# ---------------------------------------------------------------- the output folder, checked before any training
def test_out_is_a_file(tmp_path, capsys):
    (tmp_path/'f').write_text('')
    with pytest.raises(SystemExit) as e: main(RUN + ['--out', str(tmp_path/'f')])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('silhouette-nb run: error: --out') and 'is a file' in err and len(err.strip().splitlines()) == 1


def test_out_read_only(tmp_path):
    "A folder this process cannot write (as root: without CAP_DAC_OVERRIDE, through setpriv): one error, nothing trained."
    ro = tmp_path/'ro'; ro.mkdir(); ro.chmod(0o555)
    cmd = CLI + RUN + ['--out', str(ro/'results')]
    if os.geteuid() == 0:
        if not shutil.which('setpriv'): pytest.skip('running as root without setpriv: a read-only folder cannot be made')
        cmd = ['setpriv', '--bounding-set=-dac_override,-dac_read_search', '--inh-caps=-dac_override,-dac_read_search', '--'] + cmd
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    ro.chmod(0o755)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith('silhouette-nb run: error: cannot write in --out') and 'Permission denied' in p.stderr, p.stderr
    assert 'Traceback' not in p.stderr and not (ro/'results').exists()


def test_unwritable_rows_are_printed_and_the_list_goes_on(tmp_path, capsys, monkeypatch):
    "A disk that fills up after the check: each row is printed in full, every run still runs, the exit status is 1."
    import errno
    import silhouette_nb.runner as R
    def full(path, row): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(R, 'append_row', full)
    args = ['suite', 'quick', '--out', str(tmp_path), '--datasets', 'digits', '--objectives', 'ce', 'ce+sil', '--seeds', '0',
            '--device', 'cpu', '--no-bar', '--save-model', 'none'] + SMALL
    assert main(args) == 1
    out = capsys.readouterr().out
    printed = [json.loads(l) for l in out.splitlines() if l.startswith('{"key"')]
    keys = [c.key for c in QUICK.configs(seeds=(0,), datasets=('digits',), objectives=('ce', 'ce+sil'), encoders=('mlp',),
                                         epochs=1, n_train=200, n_valid=100)]
    assert [r['key'] for r in printed] == keys and all(r['top1'] is not None for r in printed)
    assert out.count('could not write the row of run') == 2 and 'No space left on device' in out and '2 rows not written' in out
    for r in printed: assert json.loads((tmp_path/'runs'/r['key']/'row.json').read_text()) == r   # and in the run folder


# ---------------------------------------------------------------- two processes, one results file
def test_two_suites_on_one_file_share_the_work(tmp_path):
    "The same suite started twice on one results file: every run trains once, and the processes say what they skipped."
    args = CLI + ['suite', 'quick', '--out', str(tmp_path), '--datasets', 'digits', '--objectives', 'ce', 'ce+sil',
                  'corel-cosine', '--seeds', '0', '1', '--device', 'cpu', '--no-bar', '--save-model', 'none'] + SMALL
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    keys = [r['key'] for r in read_rows(tmp_path/'results.jsonl')]
    assert len(keys) == 6 and len(set(keys)) == 6, outs                          # no duplicate, none missing
    ran = [o.count(': top1 ') for o in outs]
    assert sum(ran) == 6, outs                                                     # each run trained once
    for o, n in zip(outs, ran):   # each process accounts for every run: trained, recorded before it started, or skipped
        before = int(o.split(' already in ')[0].split()[-1])
        skipped = o.count('another process is running it') + o.count('another process recorded it')
        assert n + before + skipped == 6, o


# ---------------------------------------------------------------- runtime options, checked up front
@pytest.mark.parametrize('extra, msg', [
    (['--device', 'foo'], "unknown device 'foo'"),
    (['--threads', '-1'], 'threads must be a positive int'),
    (['--workers', '-1'], 'workers must be a non-negative int'),
    (['--n-train', '100000'], 'n_train=100000 but digits has 1438 training samples'),
    (['--save-model', 'some'], "unknown save_model 'some'"),
] + ([] if torch.cuda.is_available() else [(['--device', 'cuda'], 'torch sees none')]))
def test_bad_runtime_options(extra, msg, tmp_path, capsys):
    with pytest.raises(SystemExit) as e: main(RUN + ['--out', str(tmp_path/'out')] + extra)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert msg in err and err.startswith('silhouette-nb run: error:') and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path/'out'/'runs').exists()                                 # nothing trained


def test_bad_runtime_option_in_a_suite_is_one_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(['suite', 'quick', '--datasets', 'digits', '--seeds', '0', '--out', str(tmp_path), '--device', 'foo'])
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


# ---------------------------------------------------------------- determinism
def test_identical_rows_from_two_processes(tmp_path):
    "The same configuration in two processes: the same row, bit for bit, apart from timings, memory and the time it ended."
    args = ['run', '--dataset', 'digits', '--encoder', 'cnn', '--objective', 'ce+sil+supcon', '--epochs', '1', '--bs', '32',
            '--balanced', '4', '--n-train', '200', '--n-valid', '100', '--device', 'cpu', '--no-bar', '--save-model', 'none']
    for d in ('a', 'b'):
        p = subprocess.run(CLI + args + ['--out', str(tmp_path/d)], capture_output=True, text=True, env=ENV, timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
    (a,), (b,) = read_rows(tmp_path/'a'/'results.jsonl'), read_rows(tmp_path/'b'/'results.jsonl')
    assert untimed(a) == untimed(b)
    ha, hb = ([{k: v for k, v in json.loads(l).items() if k != 'epoch_s'} for l in (tmp_path/d/'runs'/a['key']/'history.jsonl').read_text().splitlines()] for d in 'ab')
    assert ha == hb


# ---------------------------------------------------------------- the report skips what is not a result row
def test_report_skips_and_counts_foreign_rows(tmp_path, capsys):
    from silhouette_nb.runner import result_row, append_row
    p = tmp_path/'results.jsonl'
    for s in (0, 1):
        append_row(p, result_row(RunConfig(seed=s), {'top1': 0.5 + s / 10, 'silhouette': 0.1, 'knn': 0.5, 'nmi': 0.5, 'ari': 0.5}))
    for foreign in ({'key': 'abc', 'config': {}}, {'key': 'def'}, [1, 2], {'key': 'ghi', 'config': {'epochz': 3}}):
        with open(p, 'a') as f: f.write(json.dumps(foreign) + '\n')
    assert len(scan_rows(p)[0]) == 2 and scan_rows(p)[1] == [3, 4, 5, 6]
    assert main(['report', str(p)]) == 0
    assert '**Skipped**: 4 lines of the file that are not result rows (lines 3, 4, 5, 6)' in (tmp_path/'report.md').read_text()


# ---------------------------------------------------------------- a group of processes stops together
def fail_on_rank_1(out):
    "Two runs in a group of two processes (gloo) whose training fails on rank 1: what each process logged, and how it ended."
    import torch.distributed as dist
    import silhouette_nb.runner as R
    torch.set_num_threads(1)
    fit = R.fit_objective
    def failing(*a, **k):
        if dist.get_rank() == 1: raise RuntimeError('boom on rank 1')
        return fit(*a, **k)
    R.fit_objective = failing
    lines, code = [], None
    cfgs = [RunConfig('digits', 'mlp', 'ce', seed=s, epochs=1, n_train=200, n_valid=100, nproc=2) for s in (0, 1)]
    try: R.run_configs(cfgs, Path(out)/'results.jsonl', device='cpu', progress=False, save_model='none', log=lines.append)
    except SystemExit as e: code = e.code
    return {'lines': lines, 'exit': code}


def test_one_failure_stops_every_process_of_a_group(tmp_path):
    t0 = time.time()
    r0, r1 = launch(fail_on_rank_1, 2, str(tmp_path), timeout=240)
    assert time.time() - t0 < 200                                                # no process waited for the collective's timeout
    assert r0['exit'] == r1['exit'] == 1                                         # both stopped, neither moved on
    failed = [l for r in (r0, r1) for l in r['lines'] if l.startswith('FAILED')]
    assert len(failed) == 1 and 'boom on rank 1' in failed[0] and 'on rank 1' in failed[0], (r0, r1)
    assert not read_rows(tmp_path/'results.jsonl')
