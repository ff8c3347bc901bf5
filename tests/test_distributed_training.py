"""Training on several processes (gloo, CPU) against one process: `DistributedTraining` in the fastai loop, and
`silhouette-nb run --nproc N` (and under `torchrun`) recording exactly one row.

The global batch is `bs` whatever the number of processes: each process loads the same batch (same seed) and trains on
its `shard_rows`, the batch-level losses gather the global batch, gradients are averaged. Without batch norm and
augmentation the weights after training therefore match the one-process weights up to floating-point summation order.
"""
import json, os, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from fastai.torch_core import set_seed
from silhouette_nb.data import get_dls
from silhouette_nb.process_group import launch, free_port
import torch.distributed as dist
from fastai.callback.core import Callback
from silhouette_nb.data import TensorClassDataset
from silhouette_nb.learner import embedding_learner, rank_device
from silhouette_nb.config import RunConfig
from fasttransform import Pipeline
from silhouette_nb.cli import main
from silhouette_nb.runner import read_rows

OBJECTIVES = ('ce+sil', 'corel-gaussian', 'ce+sil+supcon', 'supcon')


def fit_weights(objectives=OBJECTIVES):
    "One epoch (4 steps of 64) of an MLP (no batch norm) per objective, no augmentation; the final weights."
    torch.set_num_threads(1)
    out = {}
    for o in objectives:
        set_seed(0, reproducible=True)
        dls = get_dls('digits', bs=64, n_train=256, n_valid=64, augment=False, views=2 if 'supcon' in o else 1, device='cpu')
        dls.train.after_batch = Pipeline([])   # two identical views: each process would draw the random augmentations of its own rows
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


class Probe(Callback):
    "Records, at each training batch, the model's type, the rows of the batch and the dataset reads so far."
    order = 100
    def before_fit(self): self.seen = []
    def after_pred(self):
        if self.training: self.seen.append((type(self.learn.model).__name__, len(self.yb[0]), len(self.dls.train_ds.ds.reads)))


def ddp_fit(nan_on_rank=None, raise_on_rank=None, sync_bn=False, objective='ce+sil'):
    "One epoch on digits in this process's group; a NaN input in the first batch, or an error at the third, on one rank."
    torch.set_num_threads(1)
    set_seed(0, reproducible=True)
    dls = get_dls('digits', bs=64, n_train=256, n_valid=64, augment=False, device='cpu')
    dls.train_ds.ds.__class__ = CountedDigits; dls.train_ds.ds.reads = []
    rank = dist.get_rank() if dist.is_initialized() else 0
    cbs = [Probe()]
    if nan_on_rank == rank: cbs.append(Poison())
    if raise_on_rank == rank: cbs.append(Boom())
    learn = embedding_learner(dls, 'cnn', objective, seed=0, metrics=(), distributed=True, sync_bn=sync_bn, cbs=cbs)
    try:
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    except ValueError as e: return str(e)
    return {'seen': learn.probe.seen, 'model': type(learn.model).__name__, 'train': type(learn.dls.train).__name__,
            'reads': len(dls.train_ds.ds.reads)}


class CountedDigits(TensorClassDataset):
    def __getitem__(self, i): self.reads.append(int(i)); return super().__getitem__(i)


class Poison(Callback):
    "NaN inputs in the first training batch of this process."
    def before_batch(self):
        if self.training and self.train_iter == 0: self.learn.xb = (self.xb[0] * float('nan'),)


class Boom(Callback):
    def before_batch(self):
        if self.training and self.train_iter == 2: raise RuntimeError("boom on this rank")


def test_ddp_trains_each_process_on_its_shard():
    "The DDP module trains during the epochs; each process loads and trains 32 of every 64 rows; then all is restored."
    one = ddp_fit()
    r0, r1 = launch(ddp_fit, 2, timeout=300)
    assert one['seen'][0][:2] == ('EmbeddingNet', 64) and one['train'] == 'DeviceDL'
    for r in (r0, r1):
        assert [s[:2] for s in r['seen']] == [('DistributedDataParallel', 32)] * 4
        assert r['model'] == 'EmbeddingNet' and r['train'] == 'DeviceDL'     # restored after the fit
    assert r0['reads'] == r1['reads'] == one['reads'] // 2 + 1               # its half (and fastai's one-item setup pass)


def test_one_bad_shard_stops_every_process_with_one_message():
    "NaN inputs on rank 1's first batch: both processes raise rank 1's error, none waits in a collective."
    t = time.perf_counter()
    r0, r1 = launch(ddp_fit, 2, nan_on_rank=1, timeout=120)
    assert r0 == r1 and r0.startswith('process 1 of 2: ') and 'NaN' in r0, (r0, r1)
    assert time.perf_counter() - t < 60


def test_a_failing_process_stops_the_others():
    "An error in the third step of rank 1: `launch` stops rank 0 (waiting in DDP's all-reduce) and reports rank 1's error."
    t = time.perf_counter()
    with pytest.raises(RuntimeError, match='boom on this rank') as e: launch(ddp_fit, 2, raise_on_rank=1, timeout=120)
    assert '--- rank 1:' in str(e.value) and '--- rank 0:' not in str(e.value)
    assert time.perf_counter() - t < 60


def test_sync_bn_needs_gpus_on_every_process():
    r0, r1 = launch(ddp_fit, 2, sync_bn=True, timeout=120)
    assert r0 == r1 and 'sync_bn=True needs GPUs' in r0


def devices():
    return [rank_device(d) for d in ('cpu', 'cuda', 'cuda:0', 'cuda:1')]


def test_rank_device_is_the_local_rank():
    "Under several processes any CUDA device is `cuda:LOCAL_RANK` (torch.device needs no GPU); alone, the device asked for."
    r0, r1 = launch(devices, 2, timeout=60)
    assert r0 == [torch.device('cpu')] + [torch.device('cuda', 0)] * 3
    assert r1 == [torch.device('cpu')] + [torch.device('cuda', 1)] * 3
    assert devices() == [torch.device('cpu'), torch.device('cuda'), torch.device('cuda', 0), torch.device('cuda', 1)]


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


@pytest.mark.skipif(not TORCHRUN.exists(), reason='no torchrun next to the interpreter')
def test_torchrun_two_nodes_simulated(tmp_path):
    "The multi-node command, simulated: two torchrun agents (`--nnodes 2`, one process each) meet at a c10d rendezvous on localhost."
    script, port = Path(sys.executable).parent/'silhouette-nb', free_port()
    cmd = lambda node: [str(TORCHRUN), '--nnodes', '2', '--nproc_per_node', '1', '--node_rank', str(node), '--rdzv_backend', 'c10d',
                        '--rdzv_endpoint', f'127.0.0.1:{port}', '--rdzv_id', 'sim', str(script), 'run', '--dataset', 'digits',
                        '--encoder', 'mlp', '--objective', 'ce+sil', '--epochs', '1', '--n-train', '300', '--device', 'cpu',
                        '--out', str(tmp_path/f'node{node}')]
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'GLOO_SOCKET_IFNAME': 'lo'}
    nodes = [subprocess.Popen(cmd(n), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for n in (0, 1)]
    outs = [p.communicate(timeout=180) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], [o[1][-3000:] for o in outs]
    rows = [r for n in (0, 1) for r in read_rows(tmp_path/f'node{n}'/'results.jsonl')]
    assert len(rows) == 1 and rows[0]['config']['nproc'] == 2 and rows[0]['top1'] is not None   # rank 0's node writes it
