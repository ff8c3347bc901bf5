"""Global-batch losses on several processes (gloo, CPU) against one process, and chunked against unchunked evaluation.

What "the same" means (derived in nbs/00_distances.ipynb, "Gathering the batch across processes", and 08_distributed):
on W processes each holding a shard of the batch, with `gather=True`
  - every process's loss equals the single-process loss of the whole batch;
  - each process's gradient w.r.t. its own embeddings equals W times the single-process gradient of those rows
    (the gather's backward sums the gradient over processes: the adjoint of all-gather);
  - the mean over processes of the gradient of a loss's own parameters (COREL) equals the single-process gradient;
  - under DistributedDataParallel, which averages gradients over processes, every parameter gradient equals the
    single-process one.
All in float64 to 1e-6 (the differences seen are ~1e-15). Shards are unequal (23 rows over 2 processes: 12 and 11).
"""
import math
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from silhouette_nb.process_group import gather_batch, global_mean, world_size
from silhouette_nb.distances import class_distance_sums, pairwise_distances, one_hot, DISTANCES
from silhouette_nb.validation import check_chunk_size
from silhouette_nb.silhouette import SoftSilhouetteLoss, soft_silhouette_loss, silhouette_score, soft_silhouette_score
from silhouette_nb.supcon import SupConLoss, supcon_loss, supcon_anchor_losses, gram_logsumexp, chunked_gram_logsumexp
from silhouette_nb.corel import GaussianCOREL, CosineCOREL, gaussian_corel_loss, cosine_corel_loss
from silhouette_nb.process_group import launch, shard_rows, free_port

TOL = 1e-6
B, D, K = 23, 6, 4


# ---------------------------------------------------------------- the cases
def make_cases():
    "name -> (loss module with gather=True, inputs (B, ...) float64, labels)."
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    x[5] = x[4]                                            # a duplicated pair (zero distance) inside process 0
    views = torch.randn(B, 2, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (B,), generator=g)
    y_split = torch.cat([torch.zeros(12, dtype=torch.long), torch.ones(11, dtype=torch.long)])  # one class per process
    cases = {}
    for dist_name in DISTANCES:
        for chunk in (None, 5):
            cases[f'sil-{dist_name}-chunk{chunk}'] = (SoftSilhouetteLoss(0.1, dist_name, gather=True, chunk_size=chunk), x, y)
    cases['sil-unnormalized'] = (SoftSilhouetteLoss(0.05, normalize=False, gather=True), x * 3, y)
    cases['sil-one-class-per-process'] = (SoftSilhouetteLoss(0.1, gather=True), x, y_split)
    cases['sil-one-class-globally'] = (SoftSilhouetteLoss(0.1, gather=True), x, torch.full((B,), 3))
    for variant in ('out', 'in'):
        for mode in ('all', 'one'):
            for chunk in (None, 3):
                cases[f'supcon-{variant}-{mode}-chunk{chunk}'] = (SupConLoss(0.1, mode, variant, gather=True, chunk_size=chunk), views, y)
    cases['supcon-single-view'] = (SupConLoss(0.1, gather=True), x, y)
    cases['supcon-single-view-in-chunked'] = (SupConLoss(0.1, variant='in', gather=True, chunk_size=4), x, y)
    cases['supcon-one-class-per-process'] = (SupConLoss(0.1, gather=True), views, y_split)
    cases['supcon-no-positive'] = (SupConLoss(0.1, gather=True), x, torch.arange(B))
    cases['supcon-one-class-globally'] = (SupConLoss(0.1, gather=True), views, torch.zeros(B, dtype=torch.long))
    torch.manual_seed(0)
    cases['gaussian-corel'] = (GaussianCOREL(K, D, attraction=0.7, gather=True).double(), x, y)
    cases['cosine-corel'] = (CosineCOREL(K, D, attraction=0.4, gather=True).double(), x, y)
    return cases


def loss_and_grads(loss_fn, x, y):
    x = x.detach().clone().requires_grad_()
    for p in loss_fn.parameters(): p.grad = None
    loss = loss_fn(x, y)
    loss.backward()
    return loss.detach(), x.grad, [p.grad.clone() for p in loss_fn.parameters()]


class Encoder(nn.Module):
    "A linear encoder whose output the loss receives, with the loss as a submodule (so DDP averages its parameters)."
    def __init__(self, loss_fn, d_in=5, d_out=D):
        super().__init__()
        torch.manual_seed(1)
        self.lin, self.loss_fn = nn.Linear(d_in, d_out).double(), loss_fn
    def forward(self, inputs, y): return self.loss_fn(self.lin(inputs), y)


def ddp_inputs(x):
    g = torch.Generator().manual_seed(2)
    return torch.randn(*x.shape[:-1], 5, generator=g, dtype=torch.float64)


def ddp_grads(model, inputs, y):
    model.zero_grad()
    model(inputs, y).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


# ---------------------------------------------------------------- the worker (runs in every process)
def primitives():
    "gather_batch and global_mean with 3 rows on process 0 and 1 on process 1, weighted differently on each."
    rank = dist.get_rank()
    n = [3, 1][rank]
    x = torch.arange(n * 2, dtype=torch.float64).reshape(n, 2).add(100 * rank).requires_grad_()
    xg, yg, rows = gather_batch(x, torch.full((n,), rank))
    (xg * torch.arange(8, dtype=torch.float64).reshape(4, 2) * (rank + 1)).sum().backward()
    v = torch.full((n,), float(rank), dtype=torch.float64, requires_grad=True)
    m = global_mean(v)
    m.backward()
    return xg.detach(), yg, rows, x.grad, m.detach(), v.grad


def worker(cases, plain_cases):
    "Every case: loss and gradients of this process's shard, and DDP's parameter gradients; and the primitives."
    torch.set_num_threads(1)
    out = {}
    for name, (loss_fn, x, y) in cases.items():
        rows = shard_rows(len(x))
        raw = loss_and_grads(loss_fn, x[rows], y[rows])
        grads = ddp_grads(nn.parallel.DistributedDataParallel(Encoder(loss_fn)), ddp_inputs(x)[rows], y[rows])
        out[name] = dict(rows=rows, raw=raw, ddp={k.removeprefix('module.'): v for k, v in grads.items()})
    plain = {name: loss_and_grads(fn, x[shard_rows(len(x))], y[shard_rows(len(x))]) for name, (fn, x, y) in plain_cases.items()}
    return out, plain, primitives()


def plain_cases():
    "Without gather: each process computes the loss of its shard."
    cases = make_cases()
    return {'sil': (SoftSilhouetteLoss(0.1), *cases['sil-euclidean-chunkNone'][1:]),
            'supcon': (SupConLoss(0.1), *cases['supcon-out-all-chunkNone'][1:])}


@pytest.fixture(scope='module')
def launched():
    "One launch of 2 gloo processes for every test that needs them (starting processes is the slow part)."
    return launch(worker, 2, make_cases(), plain_cases(), timeout=300)


@pytest.fixture(scope='module')
def two_processes(launched):
    return make_cases(), [r[0] for r in launched]


def test_shards_are_unequal(two_processes):
    _, res = two_processes
    sizes = [r['sil-euclidean-chunkNone']['rows'] for r in res]
    assert sizes == [slice(0, 12), slice(12, 23)]


@pytest.mark.parametrize('name', list(make_cases()))
def test_same_loss_and_gradients(two_processes, name):
    cases, res = two_processes
    loss_fn, x, y = cases[name]
    W = len(res)
    loss, gx, gp = loss_and_grads(loss_fn, x, y)
    for r in res:
        l_r, gx_r, gp_r = r[name]['raw']
        torch.testing.assert_close(l_r, loss, atol=TOL, rtol=0)                       # every process: the global loss
        torch.testing.assert_close(gx_r / W, gx[r[name]['rows']], atol=TOL, rtol=0)   # own rows: W x the single gradient
    for i, g in enumerate(gp):                                                         # loss parameters: mean over processes
        torch.testing.assert_close(torch.stack([r[name]['raw'][2][i] for r in res]).mean(0), g, atol=TOL, rtol=0)
    single = ddp_grads(Encoder(loss_fn), ddp_inputs(x), y)                             # DDP: every parameter's gradient
    for r in res:
        assert r[name]['ddp'].keys() == single.keys()
        for k, g in single.items(): torch.testing.assert_close(r[name]['ddp'][k], g, atol=TOL, rtol=0)
    if 'globally' in name or 'no-positive' in name: assert loss.item() == 0 and gx.abs().max() == 0
    elif 'corel' not in name: assert gx.abs().max() > 1e-3                             # a check that could fail


def test_without_gather_the_processes_disagree(launched):
    "A check of the check: without gather, each process's loss is the loss of its shard, not of the batch."
    for name, (fn, x, y) in plain_cases().items():
        loss, _, _ = loss_and_grads(fn, x, y)
        assert max(abs(r[1][name][0] - loss) for r in launched) > 1e-3, name


def test_gather_batch_and_global_mean_with_unequal_sizes(launched):
    expected = torch.cat([torch.arange(n * 2, dtype=torch.float64).reshape(n, 2) + 100 * r for r, n in enumerate([3, 1])])
    w_sum = torch.arange(8, dtype=torch.float64).reshape(4, 2) * (1 + 2)
    for (xg, yg, rows, gx, m, gv), own in zip([r[2] for r in launched], [slice(0, 3), slice(3, 4)]):
        torch.testing.assert_close(xg, expected)                        # rank order, padding removed
        assert yg.tolist() == [0, 0, 0, 1] and rows == own
        torch.testing.assert_close(gx, w_sum[own])                      # adjoint: the sum over processes, own rows
        torch.testing.assert_close(m, torch.tensor(1 / 4, dtype=torch.float64))
        torch.testing.assert_close(gv, torch.full_like(gv, 2 / 4))      # d(sum_r mean)/dv = W / N


# ---------------------------------------------------------------- gather off when not distributed
def one_process_worker(cases):
    "In a process group of one, gather=True must change nothing."
    assert world_size() == 1 and dist.is_initialized()
    return {name: loss_and_grads(fn, x, y) for name, (fn, x, y) in cases.items()}


def _plain(fn):
    "The same loss without gather."
    import copy
    fn = copy.deepcopy(fn)
    if hasattr(fn, 'gather'): fn.gather = False
    return fn


def test_gather_is_the_identity_without_distributed():
    assert not dist.is_initialized() and world_size() == 1
    x, y = torch.randn(7, 3), torch.tensor([0, 1, 1, 0, 2, 2, 2])
    xg, yg, rows = gather_batch(x, y)
    assert xg is x and yg is y and rows == slice(0, 7)
    torch.testing.assert_close(global_mean(torch.arange(5.)), torch.tensor(2.))
    for name, (fn, xs, ys) in make_cases().items():
        a, b = loss_and_grads(fn, xs, ys), loss_and_grads(_plain(fn), xs, ys)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), name           # bit for bit


def test_gather_in_a_group_of_one():
    cases = {k: v for k, v in make_cases().items() if k in ('sil-euclidean-chunkNone', 'supcon-out-all-chunkNone', 'gaussian-corel')}
    (res,) = launch(one_process_worker, 1, cases, timeout=300)
    for name, (fn, x, y) in cases.items():   # another process, maybe other threads: float64 rounding, not bit for bit
        loss, gx, _ = loss_and_grads(_plain(fn), x, y)
        torch.testing.assert_close(res[name][0], loss, atol=1e-15, rtol=1e-15)
        torch.testing.assert_close(res[name][1], gx, atol=1e-15, rtol=1e-15)


# ---------------------------------------------------------------- launch itself
def test_launch_reports_a_worker_error():
    with pytest.raises(RuntimeError, match='invalid literal'): launch(int, 1, 'not a number', timeout=120)
    with pytest.raises(ValueError, match='nproc'): launch(int, 0)
    with pytest.raises(ValueError, match='backend'): launch(int, 1, backend='mpi')


def test_shard_rows_and_free_port():
    for n in (1, 5, 23, 24):
        for W in (1, 2, 3, 5):
            parts = [shard_rows(n, r, W) for r in range(W)]
            assert parts[0].start == 0 and parts[-1].stop == n
            assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
            assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1
    assert 0 < free_port() < 65536


# ---------------------------------------------------------------- chunked == unchunked, one process
CHUNKS = [7, 60, 300, 1000]   # B = 300: not dividing, dividing, equal to and larger than B (1: below)


@pytest.fixture(scope='module')
def batch():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 16, generator=g, dtype=torch.float64)
    x[1] = x[0]; x[2] = 0                                                  # a duplicate and a zero row
    views = torch.randn(300, 2, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 12, (300,), generator=g)
    y[-1] = 99                                                              # a singleton
    return x, views, y


@pytest.mark.parametrize('distance', list(DISTANCES))
@pytest.mark.parametrize('normalize', [True, False])
def test_chunked_silhouette_loss(batch, distance, normalize):
    x, _, y = batch
    full = loss_and_grads(SoftSilhouetteLoss(0.05, distance, normalize), x, y)
    for chunk in CHUNKS:
        part = loss_and_grads(SoftSilhouetteLoss(0.05, distance, normalize, chunk_size=chunk), x, y)
        torch.testing.assert_close(part[0], full[0], atol=1e-10, rtol=0)
        torch.testing.assert_close(part[1], full[1], atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize('distance', list(DISTANCES))
def test_chunked_exact_silhouette(batch, distance):
    x, _, y = batch
    for chunk in (7, 64):
        torch.testing.assert_close(silhouette_score(x, y, distance, chunk_size=chunk), silhouette_score(x, y, distance), atol=1e-12, rtol=0)


def test_chunked_silhouette_float32(batch):
    x, _, y = batch
    x = x.float()
    for distance in ('euclidean', 'cosine'):
        full = loss_and_grads(SoftSilhouetteLoss(distance=distance), x, y)
        part = loss_and_grads(SoftSilhouetteLoss(distance=distance, chunk_size=37), x, y)
        assert part[0].dtype == torch.float32
        torch.testing.assert_close(part[0], full[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(part[1], full[1], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize('variant', ['out', 'in'])
@pytest.mark.parametrize('mode', ['all', 'one'])
@pytest.mark.parametrize('views', [False, True])
def test_chunked_supcon(batch, variant, mode, views):
    x, v, y = batch
    f = v if views else x
    full = loss_and_grads(SupConLoss(0.1, mode, variant), f, y)
    for chunk in CHUNKS:
        part = loss_and_grads(SupConLoss(0.1, mode, variant, chunk_size=chunk), f, y)
        torch.testing.assert_close(part[0], full[0], atol=1e-10, rtol=0)
        torch.testing.assert_close(part[1], full[1], atol=1e-10, rtol=1e-8)
    a_full, valid_full = supcon_anchor_losses(f, y, 0.1, mode, variant)
    a_part, valid_part = supcon_anchor_losses(f, y, 0.1, mode, variant, chunk_size=7)
    assert torch.equal(valid_full, valid_part)
    torch.testing.assert_close(a_part, a_full, atol=1e-10, rtol=0)


def test_chunked_supcon_degenerate():
    for x, y in [(torch.randn(5, 3), torch.zeros(5, dtype=torch.long)), (torch.randn(5, 3), torch.arange(5)),
                 (torch.randn(1, 3), torch.tensor([4]))]:
        loss, gx, _ = loss_and_grads(SupConLoss(chunk_size=2), x, y)
        assert loss.item() == 0 and gx.abs().max() == 0


def test_class_distance_sums_rows_and_chunks(batch):
    x, _, y = batch
    Y = one_hot(y.unique(return_inverse=True)[1]).double()
    codes, k = y.unique(return_inverse=True)[1], Y.shape[1]
    w = torch.randn(300, k, dtype=torch.float64)
    for distance in DISTANCES:
        D = pairwise_distances(x, distance=distance) @ Y
        for rows in (slice(None), slice(0, 1), slice(17, 250), slice(299, 300)):
            for chunk in (None, 1, 13):
                torch.testing.assert_close(class_distance_sums(x, codes, k, distance, rows, chunk), D[rows], atol=1e-10, rtol=0)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        (class_distance_sums(a, codes, k, distance, slice(40, 210), 17) * w[40:210]).sum().backward()
        ((pairwise_distances(b, distance=distance) @ Y)[40:210] * w[40:210]).sum().backward()
        torch.testing.assert_close(a.grad, b.grad, atol=1e-10, rtol=1e-8)


def test_chunked_gram_logsumexp_against_masked_logsumexp():
    g = torch.Generator().manual_seed(4)
    z = F.normalize(torch.randn(50, 4, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    cols = torch.arange(10, 40)
    codes = torch.arange(50) % 3
    for a_codes, z_codes in [(None, None), (codes[cols], codes)]:
        drop = torch.zeros(30, 50, dtype=torch.bool); drop[torch.arange(30), cols] = True
        if a_codes is not None: drop |= a_codes[:, None] != z_codes[None]
        for chunk in (None, 1, 7, 30, 100):
            ours = chunked_gram_logsumexp(z[cols], z, 0.2, cols, a_codes, z_codes, chunk)
            ref = (z[cols] @ z.T / 0.2).masked_fill(drop, -math.inf).logsumexp(1)
            torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
            w = torch.randn(30, generator=g, dtype=torch.float64)
            g1, = torch.autograd.grad((ours * w).sum(), z)
            g2, = torch.autograd.grad((ref * w).sum(), z)
            torch.testing.assert_close(g1, g2, atol=1e-12, rtol=0)


def test_chunk_size_one(batch):
    x, v, y = batch
    for fn, f in ((SoftSilhouetteLoss(distance='cosine'), x[:60]), (SupConLoss(variant='in'), v[:60])):
        full = loss_and_grads(fn, f, y[:60])
        fn.chunk_size = 1
        part = loss_and_grads(fn, f, y[:60])
        torch.testing.assert_close(part[0], full[0], atol=1e-10, rtol=0)
        torch.testing.assert_close(part[1], full[1], atol=1e-10, rtol=1e-8)


def test_chunked_paths_are_first_order_only():
    "A second derivative through a chunked path raises rather than coming out silently wrong."
    x = torch.randn(20, 3, dtype=torch.float64, requires_grad=True)
    y = torch.arange(20) % 3
    for loss_fn in (SoftSilhouetteLoss(chunk_size=4), SupConLoss(chunk_size=4)):
        with pytest.raises(RuntimeError, match='first derivatives only'):
            torch.autograd.grad(loss_fn(x, y), x, create_graph=True)


def test_bad_chunk_size():
    for bad in (0, -3, 2.5, True, '8'):   # a value out of range: ValueError; not an int at all: TypeError (validation's rule)
        err = ValueError if isinstance(bad, int) and not isinstance(bad, bool) else TypeError
        with pytest.raises(err, match='chunk_size must be'): check_chunk_size(bad)
        with pytest.raises(err, match='chunk_size must be'): SoftSilhouetteLoss(chunk_size=bad)
        with pytest.raises(err, match='chunk_size must be'): SupConLoss(chunk_size=bad)
    with pytest.raises(ValueError, match='contiguous'): class_distance_sums(torch.randn(5, 2), torch.zeros(5, dtype=torch.long), 1, rows=slice(0, 5, 2))


def test_the_multi_gpu_cell_applies_the_control_rule(monkeypatch):
    "The `#| cuda` NCCL cell of 17_distributed, run with gloo's errors: the 'no gather' controls must not fail it (issue 14)."
    import json
    from pathlib import Path
    import silhouette_nb.distributed as D
    nb = json.loads((Path(__file__).resolve().parent.parent/'nbs'/'17_distributed.ipynb').read_text())
    cell = next(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'code'
                and ''.join(c['source']).startswith('#| cuda') and "backend='nccl'" in ''.join(c['source']))
    errors = {'silhouette euclidean': {'loss': 1e-16, 'grad': 2e-16, 'param_grad': 0.},   # what gloo measured
              'silhouette euclidean, no gather': {'loss': 2.8e-2, 'grad': 1.8e-2, 'param_grad': 0.},
              'supcon out, no gather': {'loss': 1.2, 'grad': 9.4e-2, 'param_grad': 0.}}
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    ns = {'torch': torch, 'cases': {}, 'global_batch_errors': lambda cases, nproc, backend: errors,
          'check_global_batch_errors': D.check_global_batch_errors}
    exec(cell, ns)                                    # passes: the controls differ, the gathered loss agrees
    errors['silhouette euclidean']['loss'] = 1e-3     # a real disagreement still fails it
    with pytest.raises(AssertionError, match='differs from one process'): exec(cell, ns)


def local_losses_on_rank_zero():
    "Rank 0 alone computes every loss without `gather` (a validation pass on one process): nothing may wait for rank 1."
    if dist.get_rank() != 0: return None
    torch.manual_seed(0)
    x, y, v = torch.randn(12, 6), torch.arange(12) % 3, torch.randn(12, 2, 6)
    return [float(SoftSilhouetteLoss()(x, y)), float(SupConLoss()(v, y)), float(SupConLoss()(x, y)),
            float(GaussianCOREL(3, 6)(x, y)), float(CosineCOREL(3, 6)(x, y))]


def test_losses_without_gather_use_no_collective():
    "Without `gather`, a loss in a process group is the plain loss of its own batch and calls no collective (it hung)."
    out = launch(local_losses_on_rank_zero, 2, timeout=60)
    assert out[1] is None and len(out[0]) == 5 and all(math.isfinite(v) for v in out[0])
