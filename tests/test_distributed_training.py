"""Training on several processes (gloo, CPU) against one process: `DistributedTraining` in the fastai loop, and
`silhouette-nb run --nproc N` (and under `torchrun`) recording exactly one row.

The global batch is `bs` whatever the number of processes: each process loads the same batch (same seed) and trains on
its `shard_rows`, the batch-level losses gather the global batch, gradients are averaged. Without batch norm and
augmentation the weights after training therefore match the one-process weights up to floating-point summation order.
"""
import json, os, subprocess, sys
from pathlib import Path
import pytest
import torch
from fastai.torch_core import set_seed
from silhouette_nb.data import get_dls
from silhouette_nb.process_group import launch, free_port
from silhouette_nb.learner import embedding_learner
from silhouette_nb.config import RunConfig
from silhouette_nb.cli import main
from silhouette_nb.runner import read_rows

OBJECTIVES = ('ce+sil', 'corel-gaussian', 'ce+sil+supcon')


def fit_weights(objectives=OBJECTIVES):
    "One epoch (4 steps of 64) of an MLP (no batch norm) per objective, no augmentation; the final weights."
    torch.set_num_threads(1)
    out = {}
    for o in objectives:
        set_seed(0, reproducible=True)
        dls = get_dls('digits', bs=64, n_train=256, n_valid=64, augment=False, views=2 if 'supcon' in o else 1, device='cpu')
        learn = embedding_learner(dls, 'mlp', o, seed=0, metrics=(), distributed=True)
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
        out[o] = {k: v.detach().clone() for k, v in learn.model.state_dict().items()}
    return out


def test_two_processes_train_the_one_process_weights():
    one = fit_weights()                                  # no process group: the callback is inert
    r0, r1 = launch(fit_weights, 2, timeout=300)
    for o in OBJECTIVES:
        for k, w in one[o].items():
            assert torch.equal(r0[o][k], r1[o][k]), (o, k)                     # the processes stay identical
            diff = float((r0[o][k].double() - w.double()).abs().max())
            assert diff < 1e-4 * max(1., float(w.abs().max())), (o, k, diff)


def test_gather_is_needed():
    "Without the gathered losses (each process's silhouette of its own rows) the weights differ: the check can fail."
    one = fit_weights(('ce+sil',))
    (r0,) = launch(fit_weights_local, 2, timeout=300)[:1]
    diff = max(float((r0[k] - w).abs().max()) for k, w in one['ce+sil'].items())
    assert diff > 1e-3, diff


def fit_weights_local():
    "As `fit_weights('ce+sil')` but with the silhouette of the local rows only (gather forced off)."
    from silhouette_nb.learner import DistributedTraining
    torch.set_num_threads(1)
    set_seed(0, reproducible=True)
    dls = get_dls('digits', bs=64, n_train=256, n_valid=64, augment=False, device='cpu')
    learn = embedding_learner(dls, 'mlp', 'ce+sil', seed=0, metrics=(), distributed=True)
    learn.objective.sil.forward = _local_sil(learn.objective.sil)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    return {k: v.detach().clone() for k, v in learn.model.state_dict().items()}


def _local_sil(sil):
    from silhouette_nb.silhouette import soft_silhouette_loss
    return lambda x, y: soft_silhouette_loss(x, y, sil.temperature, sil.distance, sil.normalize, False)


def run_cli(out, nproc):
    args = ['run', '--dataset', 'digits', '--encoder', 'cnn', '--objective', 'ce+sil', '--epochs', '3', '--bs', '64',
            '--seed', '0', '--device', 'cpu', '--threads', '1', '--out', str(out), '--nproc', str(nproc)]
    assert main(args) == 0


def test_cli_two_processes_same_accuracy_band(tmp_path):
    run_cli(tmp_path, 1)
    run_cli(tmp_path, 2)
    rows = read_rows(tmp_path/'results.jsonl')
    assert [r['config']['nproc'] for r in rows] == [1, 2]                         # one row per run, rank 0's only
    one, two = rows
    assert one['key'] == RunConfig(dataset='digits', encoder='cnn', objective='ce+sil', epochs=3, bs=64).key
    assert two['key'] != one['key'] and two['device'].endswith('× 2 processes')
    assert one['top1'] > 0.9 and two['top1'] > 0.9
    assert abs(one['top1'] - two['top1']) <= 0.03, (one['top1'], two['top1'])
    assert abs(one['silhouette'] - two['silhouette']) <= 0.05, (one['silhouette'], two['silhouette'])
    run_cli(tmp_path, 2)                                                          # recorded: skipped
    assert len(read_rows(tmp_path/'results.jsonl')) == 2


TORCHRUN = Path(sys.executable).parent/'torchrun'

@pytest.mark.skipif(not TORCHRUN.exists(), reason='no torchrun next to the interpreter')
def test_torchrun_writes_one_row(tmp_path):
    script = Path(sys.executable).parent/'silhouette-nb'
    cmd = [str(TORCHRUN), '--nproc_per_node', '2', '--master_addr', '127.0.0.1', '--master_port', str(free_port()), str(script), 'run', '--dataset', 'digits',
           '--encoder', 'mlp', '--objective', 'ce+sil', '--epochs', '1', '--n-train', '300', '--device', 'cpu',
           '--out', str(tmp_path)]   # nproc: torchrun's WORLD_SIZE
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'GLOO_SOCKET_IFNAME': 'lo'}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = read_rows(tmp_path/'results.jsonl')
    assert len(rows) == 1 and rows[0]['config']['nproc'] == 2 and rows[0]['top1'] is not None
