"""silhouette_nb.pml against pytorch-metric-learning's real classes (no mocks) and against plain-loop oracles.

Values and gradients equal our own losses to 1e-6 in float64 (the differences seen are ~1e-15); the silhouette
against a reference set and over a miner's pairs is checked against a loop written from its definition
(nbs/07a_pml.ipynb, "The silhouette against a reference set").
"""
import math, warnings
import pytest
import torch
from pytorch_metric_learning import miners, reducers
from pytorch_metric_learning.distances import LpDistance, CosineSimilarity, DotProductSimilarity, SNRDistance
from pytorch_metric_learning.losses import (MultipleLosses, TripletMarginLoss, ContrastiveLoss,
                                            SupConLoss as PMLSupConLoss, CrossBatchMemory as PMLCrossBatchMemory,
                                            SelfSupervisedLoss as PMLSelfSupervisedLoss)
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper
import silhouette_nb.silhouette as sil
import silhouette_nb.supcon as sc
import silhouette_nb.corel as corel
from silhouette_nb.distances import unit_rows
from silhouette_nb.process_group import launch, shard_rows
from silhouette_nb.pml import (SoftSilhouetteLoss, SupConLoss, GaussianCOREL, CosineCOREL, CrossBatchMemory,
                               SelfSupervisedLoss, our_distance, pair_masks, soft_silhouette_against)

TOL = 1e-6
DISTANCES = {'euclidean': (LpDistance(), True), 'euclidean-raw': (LpDistance(normalize_embeddings=False), False),
             'sqeuclidean': (LpDistance(power=2), True), 'sqeuclidean-raw': (LpDistance(power=2, normalize_embeddings=False), False),
             'cosine': (CosineSimilarity(), True)}


def batch(B=30, d=6, K=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (B,), generator=g)
    y[0] = K + 3                                  # a singleton
    x[2] = x[1]                                   # a duplicate: zero distance
    return x.requires_grad_(), y


def grad(loss, x):
    return torch.autograd.grad(loss, x)[0]


# ---------------------------------------------------------------- a loop from the definition
def _d(u, v, name):
    if name == 'euclidean': return float(torch.linalg.vector_norm(u - v))
    if name == 'sqeuclidean': return float(((u - v) ** 2).sum())
    return 1 - float(u @ v / (u.norm() * v.norm()))


def loop_silhouette(x, y, r, ry, tau, name, w):
    "s(i) of each query against the reference rows j with w[i, j], from the definition (0 without own or other pairs)."
    out = []
    for i in range(len(x)):
        by_class = {}
        for j in range(len(r)):
            if w[i, j]: by_class.setdefault(int(ry[j]), []).append(_d(x[i], r[j], name))
        own = by_class.get(int(y[i]))
        others = [sum(v) / len(v) for c, v in by_class.items() if c != int(y[i])]
        if not own or not others: out.append(0.); continue
        a = sum(own) / len(own)
        b = -tau * (math.log(sum(math.exp(-(m - min(others)) / tau) for m in others)) - min(others) / tau - math.log(len(others)))
        out.append((b - a) / max(a, b) if max(a, b) > 0 else 0.)
    return torch.tensor(out, dtype=torch.float64)


# ---------------------------------------------------------------- values equal ours
@pytest.mark.parametrize('dist', DISTANCES)
@pytest.mark.parametrize('tau', [0.01, 0.3])
@pytest.mark.parametrize('chunk', [None, 7])
def test_soft_silhouette_equals_ours(dist, tau, chunk):
    obj, normalize = DISTANCES[dist]
    name = our_distance(obj)[0]
    x, y = batch()
    ours = SoftSilhouetteLoss(tau, chunk, distance=obj)(x, y)
    ref = sil.soft_silhouette_loss(x, y, tau, name, normalize, chunk_size=chunk)
    assert abs(ours.item() - ref.item()) < TOL
    assert (grad(ours, x) - grad(ref, x)).abs().max() < TOL


@pytest.mark.parametrize('variant', ['out', 'in'])
@pytest.mark.parametrize('chunk', [None, 4])
def test_supcon_equals_ours_and_pml(variant, chunk):
    x, y = batch()
    ours = SupConLoss(0.1, variant, chunk)(x, y)
    ref = sc.supcon_loss(x, y, 0.1, variant=variant, chunk_size=chunk)
    g = grad(ours, x)
    assert abs(ours.item() - ref.item()) < TOL
    assert (g - grad(ref, x)).abs().max() < TOL
    if variant == 'out':
        pml = PMLSupConLoss(0.1)(x, y)
        assert abs(ours.item() - pml.item()) < TOL
        assert (g - grad(pml, x)).abs().max() < TOL


@pytest.mark.parametrize('ours,theirs', [(GaussianCOREL, corel.GaussianCOREL), (CosineCOREL, corel.CosineCOREL)])
def test_corel_equals_ours(ours, theirs):
    x, y = batch(K=5)
    y = y % 5
    torch.manual_seed(0); a = ours(5, 6, lam=0.3).double()
    torch.manual_seed(0); b = theirs(5, 6, lam=0.3).double()
    la, lb = a(x, y), b(x, y)
    assert abs(la.item() - lb.item()) < TOL
    assert (grad(la, x) - grad(lb, x)).abs().max() < TOL
    ga, gb = torch.autograd.grad(a(x, y), a.head.W)[0], torch.autograd.grad(b(x, y), b.W)[0]
    assert (ga - gb).abs().max() < TOL
    assert torch.equal(a.predict(x), b.predict(x)) and torch.equal(a.get_logits(x), b.logits(x))


def test_zero_losses():
    x, _ = batch()
    one_class, distinct = torch.zeros(len(x), dtype=torch.long), torch.arange(len(x))
    assert SoftSilhouetteLoss()(x, one_class).item() == 0 == sil.soft_silhouette_loss(x, one_class).item()
    assert SupConLoss()(x, distinct).item() == 0 == PMLSupConLoss()(x, distinct).item()
    assert SupConLoss()(x, one_class).item() == 0 == PMLSupConLoss()(x, one_class).item()
    assert SoftSilhouetteLoss()(x, one_class, ref_emb=x.detach(), ref_labels=one_class).item() == 0


# ---------------------------------------------------------------- reducers
def test_reducers_see_per_sample_terms():
    x, y = batch()
    s = sil.soft_silhouette_samples(unit_rows(x), y, 0.05)
    assert abs(SoftSilhouetteLoss(0.05, reducer=reducers.MeanReducer())(x, y).item() - (1 - s.mean()).item()) < TOL
    d = SoftSilhouetteLoss(0.05, reducer=reducers.DoNothingReducer())(x, y)['loss']
    assert d['reduction_type'] == 'element' and torch.equal(d['indices'], torch.arange(len(x)))
    assert (d['losses'] - (1 - s)).abs().max() < TOL
    w = torch.rand(int(y.max()) + 1, dtype=torch.float64)
    cw = SoftSilhouetteLoss(0.05, reducer=reducers.ClassWeightedReducer(w))(x, y)
    assert abs(cw.item() - ((1 - s) * w[y]).mean().item()) < TOL
    th = SoftSilhouetteLoss(0.05, reducer=reducers.ThresholdReducer(low=1.))(x, y)
    assert abs(th.item() - (1 - s[s < 0]).mean().item()) < TOL
    losses, valid = sc.supcon_anchor_losses(x, y, 0.1)
    d = SupConLoss(reducer=reducers.DoNothingReducer())(x, y)['loss']
    assert torch.equal(d['indices'], valid.nonzero()[:, 0]) and (d['losses'] - losses[valid]).abs().max() < TOL
    assert abs(SupConLoss(reducer=reducers.AvgNonZeroReducer())(x, y).item() - PMLSupConLoss()(x, y).item()) < TOL
    torch.manual_seed(0)
    h = GaussianCOREL(9, 6, reducer=reducers.DoNothingReducer()).double()
    assert h(x, y)['loss']['losses'].shape == (len(x),)


def test_embedding_regularizer_is_added():
    from pytorch_metric_learning.regularizers import LpRegularizer
    x, y = batch()
    loss = SoftSilhouetteLoss(0.05, embedding_regularizer=LpRegularizer(), embedding_reg_weight=0.1)(x, y)
    assert abs(loss.item() - (sil.soft_silhouette_loss(x, y, 0.05) + 0.1 * x.norm(dim=1).mean()).item()) < TOL


# ---------------------------------------------------------------- distances
def test_distance_objects():
    for obj in (LpDistance(p=1), LpDistance(power=3), DotProductSimilarity(), SNRDistance()):
        with pytest.raises(ValueError, match='no counterpart'): SoftSilhouetteLoss(distance=obj)
    with pytest.raises(ValueError, match='CosineSimilarity'): SupConLoss(distance=LpDistance())
    assert SupConLoss().distance.__class__ is CosineSimilarity
    assert (SoftSilhouetteLoss().sil_distance, SoftSilhouetteLoss().normalize) == ('euclidean', True)


# ---------------------------------------------------------------- miners and reference sets
def test_indices_tuple_all_pairs_is_the_unmined_loss():
    x, y = batch()
    assert abs(SoftSilhouetteLoss(0.05)(x, y, lmu.get_all_pairs_indices(y)).item() - sil.soft_silhouette_loss(x, y, 0.05).item()) < TOL
    # every triplet: the same pairs, but the singleton (no positive) is in no triplet, so it is no anchor
    s = sil.soft_silhouette_samples(unit_rows(x), y, 0.05)
    with_positive = (y[:, None] == y[None]).sum(1) > 1
    assert abs(SoftSilhouetteLoss(0.05)(x, y, lmu.get_all_triplets_indices(y)).item() - (1 - s[with_positive]).mean().item()) < TOL
    assert abs(SupConLoss()(x, y, lmu.get_all_pairs_indices(y)).item() - sc.supcon_loss(x, y).item()) < TOL


@pytest.mark.parametrize('miner', [miners.TripletMarginMiner(margin=0.3, type_of_triplets='semihard'),
                                   miners.MultiSimilarityMiner(0.1), miners.PairMarginMiner(0.2, 0.6)])
def test_mined_pairs(miner):
    x, y = batch(B=24)
    it = miner(x, y)
    pos, neg = pair_masks(y, y, it, same=True)
    w = pos | neg
    q = w.any(1)
    s = loop_silhouette(unit_rows(x.detach()), y, unit_rows(x.detach()), y, 0.05, 'euclidean', w)[q]
    d = SoftSilhouetteLoss(0.05, reducer=reducers.DoNothingReducer())(x, y, it)['loss']
    assert torch.equal(d['indices'], q.nonzero()[:, 0])
    assert (d['losses'] - (1 - s)).abs().max() < TOL
    if pos.any() and neg.any():   # PML's terms, anchor by anchor (it gives 0 to the queries without a positive)
        ours = SupConLoss(reducer=reducers.DoNothingReducer())(x, y, it)['loss']
        pml = PMLSupConLoss(reducer=reducers.DoNothingReducer())(x, y, it)['loss']['losses']
        assert (ours['losses'] - pml[ours['indices']]).abs().max() < TOL
        assert (pml[~pos.any(1)] == 0).all()
        g1, g2 = grad(ours['losses'].sum(), x), grad(pml.sum(), x)
        assert (g1 - g2).abs().max() < TOL


@pytest.mark.parametrize('dist', ['euclidean', 'sqeuclidean', 'cosine'])
def test_against_a_reference_set(dist):
    x, y = batch(B=12)
    g = torch.Generator().manual_seed(1)
    r, ry = torch.randn(20, 6, generator=g, dtype=torch.float64), torch.randint(0, 5, (20,), generator=g)
    obj = {'euclidean': LpDistance(), 'sqeuclidean': LpDistance(power=2), 'cosine': CosineSimilarity()}[dist]
    xn, rn = unit_rows(x.detach()), unit_rows(r)
    s = loop_silhouette(xn, y, rn, ry, 0.05, dist, torch.ones(12, 20, dtype=torch.bool))
    loss = SoftSilhouetteLoss(0.05, distance=obj)(x, y, ref_emb=r, ref_labels=ry)
    assert abs(loss.item() - (1 - s).mean().item()) < TOL
    assert (soft_silhouette_against(xn, y, rn, ry, 0.05, dist) - s).abs().max() < TOL
    ours, pml = SupConLoss()(x, y, ref_emb=r, ref_labels=ry), PMLSupConLoss()(x, y, ref_emb=r, ref_labels=ry)
    assert abs(ours.item() - pml.item()) < TOL and (grad(ours, x) - grad(pml, x)).abs().max() < TOL
    with pytest.raises(ValueError, match='ref_emb, ref_labels'): SoftSilhouetteLoss()(x, y, ref_emb=r, ref_labels=ry.float())


def test_corel_refuses_pairs_and_references():
    x, y = batch()
    h = GaussianCOREL(9, 6).double()
    with pytest.raises(ValueError, match='ref_emb'): h(x, y, ref_emb=x.detach(), ref_labels=y)
    with pytest.raises(ValueError, match='indices_tuple'): h(x, y, lmu.get_all_pairs_indices(y))
    with pytest.raises(ValueError, match='DistributedLossWrapper'): CosineCOREL(9, 6, gather=True)


# ---------------------------------------------------------------- PML's wrappers
def test_multiple_losses_beside_a_mined_loss():
    x, y = batch()
    miner = miners.TripletMarginMiner(margin=0.2)
    combo = MultipleLosses({'triplet': TripletMarginLoss(margin=0.2), 'sil': SoftSilhouetteLoss(0.05),
                            'supcon': SupConLoss(), 'corel': CosineCOREL(9, 6).double()},
                           miners={'triplet': miner}, weights={'triplet': 1., 'sil': 0.5, 'supcon': 0.2, 'corel': 0.3})
    total = combo(x, y)
    expected = (TripletMarginLoss(margin=0.2)(x, y, miner(x, y)) + 0.5 * sil.soft_silhouette_loss(x, y, 0.05)
                + 0.2 * sc.supcon_loss(x, y) + 0.3 * combo.losses['corel'].head(x, y))
    assert abs(total.item() - expected.item()) < TOL
    total.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and combo.losses['corel'].head.W.grad is not None


def test_self_supervised_loss():
    x, _ = batch()
    v = x.detach() + 0.1 * torch.randn_like(x)
    idx = torch.arange(len(x))
    sym = SelfSupervisedLoss(SoftSilhouetteLoss(0.05))(x, v)
    assert abs(sym.item() - sil.soft_silhouette_loss(torch.cat([x, v]), torch.cat([idx, idx]), 0.05).item()) < TOL
    asym = SelfSupervisedLoss(SoftSilhouetteLoss(0.05), symmetric=False)(x, v)
    s = loop_silhouette(unit_rows(x.detach()), idx, unit_rows(v), idx, 0.05, 'euclidean', torch.ones(len(x), len(x), dtype=torch.bool))
    assert abs(asym.item() - (1 - s).mean().item()) < TOL
    for symmetric in (True, False):   # our SupConLoss in PML's own wrapper, by its name
        a = PMLSelfSupervisedLoss(SupConLoss(), symmetric=symmetric)(x, v)
        b = PMLSelfSupervisedLoss(PMLSupConLoss(), symmetric=symmetric)(x, v)
        assert abs(a.item() - b.item()) < TOL
    with pytest.raises(Exception, match='not supported for SoftSilhouetteLoss'): PMLSelfSupervisedLoss(SoftSilhouetteLoss())
    with pytest.raises(TypeError, match='wrap silhouette_nb.pml.SoftSilhouetteLoss'): SelfSupervisedLoss(sil.SoftSilhouetteLoss())


def test_cross_batch_memory():
    torch.manual_seed(0)
    d, M = 6, 40
    batches = [batch(B=16, d=d, seed=s) for s in range(4)]
    cbm = CrossBatchMemory(SoftSilhouetteLoss(0.05), d, memory_size=M)
    x0, y0 = batches[0]
    first = cbm(x0, y0)                         # the memory holds only this batch: the plain loss
    assert abs(first.item() - sil.soft_silhouette_loss(x0, y0, 0.05).item()) < TOL
    mem_x, mem_y = [x0.detach()], [y0]
    for x, y in batches[1:]:
        loss = cbm(x, y)
        mem_x.append(x.detach()); mem_y.append(y)
        r, ry = torch.cat(mem_x)[-M:], torch.cat(mem_y)[-M:]
        w = torch.ones(len(x), len(r), dtype=torch.bool)
        own = torch.arange(len(r) - len(x), len(r))                 # this batch is the memory's newest rows ...
        w[torch.arange(len(x)), own] = False                        # ... each sample's own copy does not count
        s = loop_silhouette(unit_rows(x.detach()), y, unit_rows(r), ry, 0.05, 'euclidean', w)
        assert abs(loss.item() - (1 - s).mean().item()) < TOL
        g, = torch.autograd.grad(loss, x)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    # the wrap-around: the memory is full and the queue index has moved past its end
    assert cbm.has_been_filled
    # our SupConLoss inside PML's own CrossBatchMemory gives what PML's SupConLoss gives there
    a, b = PMLCrossBatchMemory(SupConLoss(), d, memory_size=M), PMLCrossBatchMemory(PMLSupConLoss(), d, memory_size=M)
    for x, y in batches:
        assert abs(a(x, y).item() - b(x, y).item()) < TOL
    # with a miner of its own
    c = CrossBatchMemory(SoftSilhouetteLoss(0.05), d, memory_size=M, miner=miners.MultiSimilarityMiner(0.1))
    for x, y in batches: assert torch.isfinite(c(x, y))


def test_autocast_bfloat16():
    "Under CPU bfloat16 autocast: float32 out, within 1e-2 of the float32 value, finite gradients."
    x, y = batch()
    x32 = x.detach().float().requires_grad_()
    def corel_head(): torch.manual_seed(0); return GaussianCOREL(9, 6)
    makers = {'sil': lambda: SoftSilhouetteLoss(0.05), 'supcon': SupConLoss, 'supcon-in': lambda: SupConLoss(variant='in'),
              'corel': corel_head, 'memory': lambda: CrossBatchMemory(SoftSilhouetteLoss(0.05), 6)}
    for name, make in makers.items():
        ref = make()(x32, y)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = make()(x32 @ torch.eye(6), y)
        assert out.dtype == torch.float32, name
        assert abs(out.item() - ref.item()) <= 1e-2 * abs(ref.item()), name
        g, = torch.autograd.grad(out, x32)
        assert torch.isfinite(g).all(), name


# ---------------------------------------------------------------- DistributedLossWrapper on 1 and 2 processes
def _make_losses():
    torch.manual_seed(0)
    return {'sil': SoftSilhouetteLoss(0.05), 'sil-cos': SoftSilhouetteLoss(0.05, distance=CosineSimilarity()),
            'supcon': SupConLoss(), 'gaussian-corel': GaussianCOREL(9, 6, lam=0.4).double()}


def dist_worker(x, y):
    "Each process holds its shard; returns what DistributedLossWrapper gives for each loss, efficient off and on."
    import torch.distributed as dist
    rows = shard_rows(len(x))
    xs, ys = x[rows].clone().requires_grad_(), y[rows]
    out = {}
    for name, loss in _make_losses().items():
        for efficient in ((False, True) if name != 'gaussian-corel' else (False,)):
            wrapped = DistributedLossWrapper(loss, efficient=efficient)
            v = wrapped(xs, ys)
            g, = torch.autograd.grad(v, xs)
            out[(name, efficient)] = (v.item(), g, rows)
    return dist.get_world_size(), out


@pytest.mark.parametrize('nproc', [1, 2])
def test_distributed_loss_wrapper(nproc):
    x, y = batch(B=24)
    x = x.detach()
    y = y % 4
    res = launch(dist_worker, nproc, x, y, threads=1, timeout=300)
    single = {'sil': lambda v: sil.soft_silhouette_loss(v, y, 0.05), 'sil-cos': lambda v: sil.soft_silhouette_loss(v, y, 0.05, 'cosine'),
              'supcon': lambda v: sc.supcon_loss(v, y)}
    xg = x.clone().requires_grad_()
    for name in single:
        ref = single[name](xg)
        g_ref, = torch.autograd.grad(ref, xg)
        for W, out in res:
            assert W == nproc
            v, g, rows = out[(name, False)]
            assert abs(v - nproc * ref.item()) < TOL                # the global batch's loss, times W (undoing DDP's mean)
            assert (g - nproc * g_ref[rows]).abs().max() < TOL      # all of the loss's gradient for this process's rows
        if name != 'supcon':                                        # efficient: this shard's samples within the global batch
            terms = 1 - sil.soft_silhouette_samples(unit_rows(x), y, 0.05, 'cosine' if name == 'sil-cos' else 'euclidean')
            for W, out in res:
                v, g, rows = out[(name, True)]
                assert abs(v - nproc * terms[rows].mean().item()) < TOL
    torch.manual_seed(0)
    head = GaussianCOREL(9, 6, lam=0.4).double()
    ref = head(x, y)
    for W, out in res: assert abs(out[('gaussian-corel', False)][0] - nproc * ref.item()) < TOL
    if nproc == 2:
        sup = [out[('supcon', True)][0] for _, out in res]
        losses, valid = sc.supcon_anchor_losses(x, y, 0.1)
        for (_, out), s in zip(res, sup):
            rows = out[('supcon', True)][2]
            assert abs(s - 2 * losses[rows][valid[rows]].mean().item()) < TOL
