"""pytorch-metric-learning's own loss-agnostic checks, with silhouette_nb.pml's losses swapped in.

PML 2.9's tests are not installed with it; these are written after its `tests/losses/test_losses_without_labels.py`,
`tests/utils/test_distributed.py` (a DDP model trained on several processes lands on the weights of the same steps on
one process), `tests/losses/test_cross_batch_memory.py` and `tests/losses/test_multiple_losses.py`, with our
`SupConLoss` where PML's use theirs (or `ContrastiveLoss`), in float64.
"""
import pytest
import torch
from pytorch_metric_learning import miners, reducers
from pytorch_metric_learning.losses import (MultipleLosses, TripletMarginLoss, ContrastiveLoss,
                                            SupConLoss as PMLSupConLoss, CrossBatchMemory as PMLCrossBatchMemory)
from pytorch_metric_learning.utils import distributed as pml_dist
from pytorch_metric_learning.utils.loss_and_miner_utils import get_all_pairs_indices
from silhouette_nb.process_group import launch
from silhouette_nb.pml import SoftSilhouetteLoss, SupConLoss, GaussianCOREL, CosineCOREL, CrossBatchMemory


# ---------------------------------------------------------------- losses without labels
def _pairs(emb, labels):
    return {'all pairs': get_all_pairs_indices(labels), 'multi-similarity': miners.MultiSimilarityMiner()(emb, labels),
            'triplets': miners.TripletMarginMiner()(emb, labels)}


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('variant', ['out', 'in'])
def test_supcon_without_labels_is_the_loss_with_labels(dtype, variant):
    "PML's test_losses_without_labels: the mined pairs define the positives; the value equals the labelled call exactly."
    g = torch.Generator().manual_seed(0)
    emb, labels = torch.randn(64, 32, generator=g, dtype=dtype), torch.randint(0, 10, (64,), generator=g)
    for name, p in _pairs(emb, labels).items():
        loss_fn = SupConLoss(variant=variant)
        with_labels = loss_fn(emb, labels, p)
        assert loss_fn(emb, indices_tuple=p).item() == with_labels.item(), name
        assert loss_fn(emb, indices_tuple=p, ref_emb=emb).item() == with_labels.item(), name
        if variant == 'out':   # and PML's SupConLoss on the same pairs, without labels too
            assert abs(with_labels.item() - PMLSupConLoss()(emb, indices_tuple=p).item()) < (1e-5 if dtype == torch.float32 else 1e-12)


def test_gradient_without_labels():
    g = torch.Generator().manual_seed(1)
    emb, labels = torch.randn(40, 8, generator=g, dtype=torch.float64, requires_grad=True), torch.randint(0, 5, (40,), generator=g)
    p = miners.MultiSimilarityMiner()(emb, labels)
    ga, = torch.autograd.grad(SupConLoss()(emb, labels, p), emb)
    gb, = torch.autograd.grad(SupConLoss()(emb, indices_tuple=p), emb)
    gc, = torch.autograd.grad(PMLSupConLoss()(emb, indices_tuple=p), emb)
    assert torch.equal(ga, gb) and (ga - gc).abs().max() < 1e-12


def test_neither_labels_nor_pairs_is_a_value_error():
    emb = torch.randn(16, 4)
    for loss_fn in (SupConLoss(), SupConLoss(variant='in', chunk_size=4), SoftSilhouetteLoss()):
        with pytest.raises(ValueError, match='needs labels'): loss_fn(emb)
        with pytest.raises(ValueError, match='needs labels'): loss_fn(emb, ref_emb=emb)
        with pytest.raises(ValueError, match='needs labels'): loss_fn(emb, ref_emb=emb.clone())
    with pytest.raises(ValueError): PMLSupConLoss()(emb)   # the type PML's own losses raise


def test_losses_that_need_labels_say_so():
    "PML's 'incompatible losses': pairs alone are a ValueError; the silhouette's says why."
    emb, labels = torch.randn(32, 8), torch.randint(0, 4, (32,))
    p = get_all_pairs_indices(labels)
    with pytest.raises(ValueError, match='a silhouette compares each sample.s class'): SoftSilhouetteLoss()(emb, indices_tuple=p)
    with pytest.raises(ValueError, match='ref_labels'): SoftSilhouetteLoss()(emb, labels, ref_emb=emb.clone())
    for head in (GaussianCOREL(4, 8), CosineCOREL(4, 8)):
        with pytest.raises(ValueError, match='needs labels'): head(emb, indices_tuple=p)


def test_a_reference_set_without_labels():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(12, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (12,), generator=g)
    r, ry = torch.randn(20, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (20,), generator=g)
    p = get_all_pairs_indices(y, ry)
    ours = SupConLoss()(x, indices_tuple=p, ref_emb=r)
    assert ours.item() == SupConLoss()(x, y, p, r, ry).item()
    assert abs(ours.item() - SupConLoss()(x, y, ref_emb=r, ref_labels=ry).item()) < 1e-12
    assert abs(ours.item() - PMLSupConLoss()(x, indices_tuple=p, ref_emb=r).item()) < 1e-12
    with pytest.raises(ValueError, match='needs labels'): SupConLoss()(x, y, ref_emb=r)   # no ref_labels, no pairs


# ---------------------------------------------------------------- CrossBatchMemory
@pytest.mark.parametrize('miner', [None, miners.MultiSimilarityMiner(0.1), miners.PairMarginMiner(0.2, 0.5)])
@pytest.mark.parametrize('enqueue', [False, True])
def test_cross_batch_memory_with_our_supcon_is_pml_supcon(miner, enqueue):
    """Our SupConLoss in PML's CrossBatchMemory has PML's SupConLoss terms there, anchor by anchor, values and gradients,
    through the wrap-around. Compared term by term: a query whose only pair is one positive has the term 0 to rounding
    (ours 1e-16, PML's exactly 0), which PML's AvgNonZeroReducer drops and our MeanReducer counts (07a_pml, Miners)."""
    d, M = 6, 40
    g = torch.Generator().manual_seed(3)
    terms = reducers.DoNothingReducer
    ours, theirs = (PMLCrossBatchMemory(SupConLoss(reducer=terms()), d, memory_size=M, miner=miner),
                    PMLCrossBatchMemory(PMLSupConLoss(reducer=terms()), d, memory_size=M, miner=miner))
    reduced, admitted = (PMLCrossBatchMemory(SupConLoss(), d, memory_size=M, miner=miner),
                         CrossBatchMemory(SupConLoss(), d, memory_size=M, miner=miner))
    for step in range(6):
        x = torch.randn(16, d, generator=g, dtype=torch.float64, requires_grad=True)
        y = torch.randint(0, 4, (16,), generator=g)
        mask = torch.rand(16, generator=g) < 0.5 if enqueue else None
        a, b = ours(x, y, enqueue_mask=mask)['loss'], theirs(x, y, enqueue_mask=mask)['loss']
        r, c = reduced(x, y, enqueue_mask=mask), admitted(x, y, enqueue_mask=mask)   # every memory sees every batch
        assert r.item() == c.item(), step
        if a['reduction_type'] == 'already_reduced':             # no positive or no negative pair: both zero
            assert b['reduction_type'] == 'already_reduced'; continue
        mine, all_rows = a['indices'], torch.ones(len(b['losses']), dtype=torch.bool)
        all_rows[mine] = False
        assert (a['losses'] - b['losses'][mine]).abs().max() < 1e-12 and (b['losses'][all_rows] == 0).all(), step
        ga, = torch.autograd.grad(a['losses'].sum(), x)
        gb, = torch.autograd.grad(b['losses'].sum(), x)
        assert (ga - gb).abs().max() < 1e-12, step
        assert abs(r.item() - a['losses'].mean().item()) < 1e-12, step
    assert ours.has_been_filled and theirs.has_been_filled


# ---------------------------------------------------------------- MultipleLosses
def test_multiple_losses_with_our_supcon():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(30, 6, generator=g, dtype=torch.float64), torch.randint(0, 5, (30,), generator=g)
    miner = miners.MultiSimilarityMiner(0.1)
    p = miner(x, y)
    for container in (lambda a, b: [a, b], lambda a, b: {'supcon': a, 'contrastive': b}):
        weights = container(0.3, 0.7)
        mined = container(miner, None) if isinstance(weights, list) else {'supcon': miner}   # a dict names only the mined
        ours = MultipleLosses(container(SupConLoss(reducer=reducers.AvgNonZeroReducer()), ContrastiveLoss()), mined, weights)(x, y)
        theirs = MultipleLosses(container(PMLSupConLoss(), ContrastiveLoss()), mined, weights)(x, y)
        assert abs(ours.item() - theirs.item()) < 1e-12
        # without labels (PML 2.9's MultipleLosses hands every loss the same tuple): as with them
        combo = MultipleLosses(container(SupConLoss(), ContrastiveLoss()), weights=weights)
        expected = 0.3 * SupConLoss()(x, y, p) + 0.7 * ContrastiveLoss()(x, y, p)
        assert combo(x, None, p).item() == combo(x, y, p).item()
        assert abs(combo(x, None, p).item() - expected.item()) < 1e-12
        with pytest.raises(ValueError): combo(x, None)


# ---------------------------------------------------------------- DistributedLossWrapper: PML's DDP check
WORLD, BATCH, ITERS, LR = 2, 12, 3, 0.1
CONFIGS = [  # (miner, efficient, xbm, use_ref, pass_labels, enqueue_mask), as PML's test_distributed.py runs them
    *[(False, False, False, ref, True, False) for ref in (False, True)],             # test_distributed_tuple_loss
    *[(False, False, True, False, True, m) for m in (False, True)],                    # ... with CrossBatchMemory
    *[(True, False, False, ref, lab, False) for ref in (False, True) for lab in (False, True)],   # ... _and_miner
    (True, False, True, False, True, False),
    *[(False, True, False, ref, True, False) for ref in (False, True)],              # ..._efficient
    *[(True, True, False, ref, lab, False) for ref in (False, True) for lab in (False, True)],    # ..._and_miner_efficient
]


def _model():
    return torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.ReLU(), torch.nn.Linear(10, 5)).double()


def _loss(xbm):
    return CrossBatchMemory(SupConLoss(), 5) if xbm else SupConLoss()


def _miner():
    return miners.PairMarginMiner(pos_margin=0.5, neg_margin=0.5)


def _data():
    g = torch.Generator().manual_seed(75210)
    def rows(): return [[torch.randn(BATCH, 10, generator=g, dtype=torch.float64) for _ in range(WORLD)] for _ in range(ITERS)]
    def labs(): return [[torch.randint(0, 2, (BATCH,), generator=g) for _ in range(WORLD)] for _ in range(ITERS)]
    inputs, labels, ref_inputs, ref_labels = rows(), labs(), rows(), labs()
    enqueue = [torch.randint(0, 2, (BATCH,), generator=g).bool() for _ in range(WORLD)]
    torch.manual_seed(0)
    return _model().state_dict(), inputs, labels, ref_inputs, ref_labels, enqueue


def _one_process(cfg, state, inputs, labels, ref_inputs, ref_labels, enqueue):
    "The same steps on one process, as PML's test computes them."
    use_miner, efficient, xbm, use_ref, _, use_mask = cfg
    model, loss_fn, miner = _model(), _loss(xbm), _miner() if use_miner else None
    model.load_state_dict(state)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for i in range(ITERS):
        opt.zero_grad()
        out, lab = model(torch.cat(inputs[i])), torch.cat(labels[i])
        ref, rlab = (model(torch.cat(ref_inputs[i])), torch.cat(ref_labels[i])) if use_ref else (None, None)
        if efficient:
            loss = 0
            for r in range(WORLD):
                s, e = r * BATCH, (r + 1) * BATCH
                src, rsrc = (out, lab) if ref is None else (ref, rlab)
                curr, curr_lab = out[s:e], lab[s:e]
                others = torch.cat([src[s:e], torch.cat([src[:s], src[e:]]).detach()])
                other_lab = torch.cat([rsrc[s:e], rsrc[:s], rsrc[e:]])
                t = pml_dist.get_indices_tuple(curr_lab, other_lab, curr, others, miner) if miner else pml_dist.get_indices_tuple(curr_lab, other_lab)
                loss = loss + loss_fn(curr, curr_lab, t, others, other_lab)
        else:
            t = miner(out, lab, ref, rlab) if miner else None
            if xbm: loss = loss_fn(out, lab, t, torch.cat(enqueue) if use_mask else None)
            else: loss = loss_fn(out, lab, t, ref, rlab)
        loss.backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def ddp_worker(state, inputs, labels, ref_inputs, ref_labels, enqueue):
    "Every configuration on this process of the group: DDP, DistributedLossWrapper and DistributedMinerWrapper, as PML's test."
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    rank, out = dist.get_rank(), {}
    for cfg in CONFIGS:
        use_miner, efficient, xbm, use_ref, pass_labels, use_mask = cfg
        model = _model()
        model.load_state_dict(state)
        ddp = DDP(model)
        loss_fn = pml_dist.DistributedLossWrapper(_loss(xbm), efficient=efficient)
        miner = pml_dist.DistributedMinerWrapper(_miner(), efficient=efficient) if use_miner else None
        opt = torch.optim.SGD(ddp.parameters(), lr=LR)
        for i in range(ITERS):
            opt.zero_grad()
            emb, lab = ddp(inputs[i][rank]), labels[i][rank]
            ref, rlab = (ddp(ref_inputs[i][rank]), ref_labels[i][rank]) if use_ref else (None, None)
            t = miner(emb, lab, ref, rlab) if miner else None
            if miner and not pass_labels: loss = loss_fn(emb, indices_tuple=t, ref_emb=ref)
            elif use_mask: loss = loss_fn(emb, lab, t, enqueue_mask=enqueue[rank])
            else: loss = loss_fn(emb, lab, t, ref, rlab)
            dist.barrier()
            loss.backward()
            opt.step()
        out[cfg] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return out


def test_distributed_loss_wrapper_trains_as_one_process():
    "PML's distributed check on 2 gloo processes with our SupConLoss: without labels (pairs from the miner) too."
    data = _data()
    res = launch(ddp_worker, WORLD, *data, threads=1, timeout=300)
    start = torch.cat([p.reshape(-1) for p in data[0].values()])
    for cfg in CONFIGS:
        expected = _one_process(cfg, *data)
        assert (expected - start).abs().max() > 1e-3, cfg          # the steps moved the weights
        for r in range(WORLD):
            assert (res[r][cfg] - expected).abs().max() < 1e-10, (cfg, r)
