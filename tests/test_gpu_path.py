"""The GPU path of training, checked on the CPU where it can be and on CUDA where only a GPU shows it.

On the CPU: the host synchronisations of a training step, counted by intercepting the tensor methods that wait for
the device (`item`, `tolist`, `cpu`, `numpy`, `__bool__`, `__int__`, `__float__`, `nonzero`) and, at the operator
level, `validation.count_syncs`, attributed to our code or to fastai's. The GPU-marked tests (`pytest -m gpu`, run by
`make gpu-check`) check on CUDA what the CPU cannot show: the fused optimiser's kernels, pinned and non-blocking copies
of uint8 images normalised on the device, and data-parallel training on NCCL with `SyncBatchNorm`.
"""
import collections, os, sys
import pytest
import torch
from fastai.callback.core import Callback
from fastai.optimizer import Adam
from fastai.torch_core import set_seed
from silhouette_nb import data as D
from silhouette_nb.data import get_dls
from silhouette_nb.learner import FusedAdam, embedding_learner
from silhouette_nb.validation import count_syncs
from silhouette_nb.validation import set_default_validate_args, validating

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs two GPUs')
SYNC_METHODS = ('item', 'tolist', 'cpu', 'numpy', '__bool__', '__int__', '__float__', 'nonzero')


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def no_validation():
    "The per-batch value checks off, package-wide (`set_default_validate_args(False)`), for the test only."
    was = validating(); set_default_validate_args(False)
    yield
    set_default_validate_args(was)


def _caller():
    "The package of the first frame outside torch and this file: 'silhouette_nb', 'fastai' or 'other'."
    f = sys._getframe(3)
    while f is not None and ('/torch/' in f.f_code.co_filename or f.f_code.co_filename == __file__): f = f.f_back
    path = f.f_code.co_filename if f is not None else ''
    return next((p for p in ('silhouette_nb', 'fastai') if f'{os.sep}{p}{os.sep}' in path), 'other')


class StepSyncs(Callback):
    "For each training step, `before_batch` to `after_batch`: synchronising tensor methods by (method, caller), and operators."
    order = -100   # opens a step before any other callback's `before_batch`
    def __init__(self, aten): self.aten, self.steps, self.on = aten, [], False
    def before_batch(self):
        if self.training: self.steps.append((collections.Counter(), self.aten.copy())); self.on = True
    def call(self, name, real, *args, **kwargs):
        "Count a call of `real` (the method `name`) unless it comes from inside another counted call (a torch mode's)."
        outer, self.depth = getattr(self, 'depth', 0) == 0, getattr(self, 'depth', 0) + 1
        try:
            if self.on and outer: self.steps[-1][0][(name, _caller())] += 1
            return real(*args, **kwargs)
        finally: self.depth -= 1

class StepEnd(Callback):
    "Closes the step after every other callback's `after_batch` (the loading of the next batch is not the step's)."
    order = 1000
    def __init__(self, counter): self.counter = counter
    def after_batch(self):
        if self.counter.on: self.counter.on = False; self.counter.steps[-1] = (self.counter.steps[-1][0], self.counter.aten - self.counter.steps[-1][1])


def step_syncs(spec, monkeypatch, steps=6, device='cpu', **kw):
    "Train `spec` for `steps` steps on digits (no progress bar); per step: ({(method, caller): calls}, {operator: calls})."
    set_seed(0)
    dls = get_dls('digits', bs=64, n_train=64 * steps, device=device)
    with count_syncs() as aten:
        cb = StepSyncs(aten)
        for n in SYNC_METHODS:
            real = getattr(torch.Tensor, n)
            monkeypatch.setattr(torch.Tensor, n, (lambda n, real: lambda *a, **k: cb.call(n, real, *a, **k))(n, real))
        learn = embedding_learner(dls, 'cnn', spec, seed=0, metrics=(), cbs=[cb, StepEnd(cb)], **kw)
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    monkeypatch.undo()
    return cb.steps


@pytest.mark.parametrize('spec', ['ce', 'ce+center'])
def test_no_host_sync_per_step_in_the_learner(spec, monkeypatch, no_validation):
    "After the first step (which checks the batch once per fit) our code synchronises nothing; fastai's smooth loss calls `.cpu()`."
    steps = step_syncs(spec, monkeypatch)
    first, rest = steps[0], steps[1:]
    ours = lambda m: sum(v for (name, who), v in m.items() if who == 'silhouette_nb')
    print(spec, 'first step:', dict(first[0]), dict(first[1]), '| each later step:', dict(rest[0][0]), dict(rest[0][1]))
    assert ours(first[0]) > 0 and sum(first[1].values()) > 0        # the objective's check of the first batch syncs, once
    for methods, ops in rest:
        assert ours(methods) == 0, methods
        assert dict(methods) == {('cpu', 'fastai'): 1}, methods       # AvgSmoothLoss: to_detach(loss).cpu(), every step
        assert sum(ops.values()) == 0, ops                            # no synchronising operator at all


def test_validation_on_syncs_every_step(monkeypatch):
    "The counter can fail: with the value checks on (the default) the objective reads labels and finiteness every step."
    rest = step_syncs('ce', monkeypatch)[1:]
    assert all(sum(ops.values()) > 0 for _, ops in rest)


# ---------------------------------------------------------------- on CUDA
@cuda
@pytest.mark.gpu
@pytest.mark.parametrize('spec', ['ce', 'ce+center'])
def test_gpu_one_device_to_host_copy_per_step(spec, monkeypatch, no_validation):
    "On CUDA the only synchronisation of a later step is fastai's smoothed loss, a copy to the host."
    for methods, ops in step_syncs(spec, monkeypatch, device='cuda')[1:]:
        assert dict(methods) == {('cpu', 'fastai'): 1} and dict(ops) == {'aten._to_copy': 1}, (methods, ops)


@cuda
@pytest.mark.gpu
def test_gpu_fused_adam_matches_fastai_adam():
    def fit(opt_func):
        set_seed(0)
        learn = embedding_learner(get_dls('digits', bs=64, n_train=512, device='cuda'), 'cnn', 'ce+sil', seed=0, metrics=(), opt_func=opt_func)
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(2, 3e-3)
        return learn
    a, b = fit(Adam), fit(FusedAdam)
    assert b.opt.opt.param_groups[0]['fused'] and next(b.model.parameters()).is_cuda
    assert max(float((p - q).abs().max()) for p, q in zip(a.model.parameters(), b.model.parameters())) < 1e-4


@cuda
@pytest.mark.gpu
def test_gpu_pinned_non_blocking_uint8(monkeypatch):
    "On CUDA the image batch leaves pinned memory as uint8, copied without blocking, and is normalised on the GPU."
    seen = []
    real = D.to_device
    def spy(b, device=None, non_blocking=False):
        seen.append((b[0].dtype, b[0].is_pinned(), non_blocking)); return real(b, device, non_blocking)
    monkeypatch.setattr(D, 'to_device', spy)
    imgs = D.TensorClassDataset(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8), torch.arange(8) % 2, 'ab')
    stats = ([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    dl = D.DeviceDL(imgs, bs=8, num_workers=0, pin_memory=True, device='cuda', after_batch=D.NormalizeOnDevice(*stats))
    x, y = dl.one_batch()
    assert seen == [(torch.uint8, True, True)] and x.is_cuda and x.dtype == torch.float32
    cpu = D.DeviceDL(imgs, bs=8, num_workers=0, device='cpu', after_batch=D.NormalizeOnDevice(*stats)).one_batch()[0]
    assert torch.allclose(x.cpu(), cpu, atol=1e-6)


def _ddp_weights(sync_bn):
    torch.set_num_threads(1)
    set_seed(0, reproducible=True)
    dls = get_dls('digits', bs=64, n_train=256, n_valid=64, augment=False, device='cuda:0')   # every rank asks for GPU 0 ...
    learn = embedding_learner(dls, 'cnn', 'ce+sil', seed=0, metrics=(), distributed=True, sync_bn=sync_bn)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    p = next(learn.model.parameters())
    return p.device.index, type(learn.model.encoder[1]).__name__, {k: v.cpu() for k, v in learn.model.state_dict().items()}


@two_gpus
@pytest.mark.gpu
@pytest.mark.parametrize('sync_bn', [False, True])
def test_gpu_ddp_nccl(sync_bn):
    "... and trains on its own (`cuda:LOCAL_RANK`); with `sync_bn` the batch norms are `SyncBatchNorm`; the ranks agree."
    from silhouette_nb.process_group import launch
    (d0, bn0, w0), (d1, bn1, w1) = launch(_ddp_weights, 2, sync_bn, backend='nccl', timeout=300)
    assert (d0, d1) == (0, 1) and bn0 == bn1 == ('SyncBatchNorm' if sync_bn else 'BatchNorm2d')
    assert all(torch.allclose(w0[k].float(), w1[k].float(), atol=1e-6) for k in w0)
