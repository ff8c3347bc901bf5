"""Whole-set metrics: the retrieval metrics against pytorch-metric-learning's `AccuracyCalculator` and a plain Python loop,
the neighbour order and its ties, singletons, block sizes, and the store's one neighbour pass in bounded memory."""
import inspect
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN, return_results
from sklearn.metrics import accuracy_score
from sklearn.neighbors import KNeighborsClassifier
from torch.utils._python_dispatch import TorchDispatchMode

import silhouette_nb.metrics as metrics
from silhouette_nb.metrics import (RETRIEVAL_METRICS, WHOLE_SET_METRICS, EmbeddingStore, knn_accuracy, neighbour_blocks,
                                   neighbour_metrics, whole_set_metrics)
from silhouette_nb.silhouette import silhouette_score
from silhouette_nb.validation import set_default_validate_args

PML_NAMES = dict(zip(RETRIEVAL_METRICS, ('precision_at_1', 'r_precision', 'mean_average_precision_at_r')))


def _clustered(seed, n=400, n_classes=9, d=8, spread=1.2, singletons=3):
    "Unit rows around random class centres; the first `singletons` samples each alone in a class."
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n,), generator=g)
    y[:singletons] = torch.arange(100, 100 + singletons)
    centres = torch.randn(100 + singletons, d, generator=g)
    return F.normalize(torch.randn(n, d, generator=g) + spread * centres[y], dim=1), y


def _pml(knn_func):
    "PML's calculator for the three retrieval metrics, with a torch k-NN (no faiss), k large enough for MAP@R."
    return AccuracyCalculator(include=tuple(PML_NAMES.values()), k='max_bin_count', device=torch.device('cpu'),
                              knn_func=knn_func)


def _knn64(query, k, reference, ref_includes_query):
    "A float64 brute-force torch k-NN in PML's `knn_func` interface."
    D, I = torch.cdist(query.double(), reference.double()).topk(k + ref_includes_query, largest=False)
    return return_results(D, I, ref_includes_query)


# ---------------------------------------------------------------- against pytorch-metric-learning
def _mixed_gap(x, y):
    "Smallest float64 gap between consecutive distances among a query's R + 1 nearest, one of its class and one not."
    d, i = torch.cdist(x.double(), x.double()).fill_diagonal_(math.inf).sort(1)
    rel = y[i] == y[:, None]
    before_r = torch.arange(1, len(x))[None] <= rel.sum(1, keepdim=True)
    return (d[:, 1:] - d[:, :-1])[(rel[:, 1:] != rel[:, :-1]) & before_r].min().item()


@pytest.mark.parametrize('seed', range(5))
def test_retrieval_matches_pml_float32_unit_rows(seed):
    """Unit rows in float32, as the store evaluates them, against PML's own torch k-NN (CustomKNN + LpDistance,
    Euclidean). Two float32 formulas for a distance differ by ~1e-7, so the data must have no near-tie that rounding
    could reorder (checked); the float64 test below has no such proviso."""
    x, y = _clustered(seed, 100, d=16)
    assert _mixed_gap(x, y) > 1e-5, "near ties: float32 rounding could order this data differently"
    theirs = _pml(CustomKNN(LpDistance())).get_accuracy(x, y)
    ours = neighbour_metrics(x, y, chunk_size=31)
    for m, p in PML_NAMES.items(): assert ours[m] == pytest.approx(theirs[p], abs=1e-6), m


@pytest.mark.parametrize('n,n_classes,d,chunk', [(300, 4, 3, 1000), (257, 20, 5, 16), (120, 60, 2, 7)])
def test_retrieval_matches_pml_float64(n, n_classes, d, chunk):
    "The same in float64 on both sides (so no near-tie can order differently): equal to rounding."
    x, y = _clustered(n + d, n, n_classes, d, spread=0.8, singletons=2)
    theirs = _pml(_knn64).get_accuracy(x, y)        # PML hands its k-NN float32 values: x is already float32
    ours = neighbour_metrics(x.double(), y, chunk_size=chunk)
    for m, p in PML_NAMES.items(): assert ours[m] == pytest.approx(theirs[p], abs=1e-12), m


# ---------------------------------------------------------------- against the formulas, ties included
def _grid(seed, n=60):
    "Points on a small integer grid (many exactly equal distances, computed exactly) and labels with a singleton."
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 4, (n, 2), generator=g).double()
    y = torch.randint(0, 3, (n,), generator=g)
    y[0] = 7
    return x, y


def _loop(x, y, k):
    "k-NN accuracy and the retrieval metrics one query at a time: neighbours by (squared distance, index), Python ints."
    pts, labels = x.long().tolist(), y.tolist()
    knn = p1 = rp = ap = 0.
    n_q = 0
    for i, (xi, yi) in enumerate(zip(pts, labels)):
        order = sorted((j for j in range(len(pts)) if j != i), key=lambda j: (sum((a - b) ** 2 for a, b in zip(xi, pts[j])), j))
        votes = [labels[j] for j in order[:k]]
        knn += max(sorted(set(votes)), key=votes.count) == yi           # most votes; of equal counts the smallest label
        R = labels.count(yi) - 1
        if R == 0: continue
        n_q += 1
        rel = [labels[j] == yi for j in order[:R]]
        p1 += rel[0]
        rp += sum(rel) / R
        ap += sum(sum(rel[:p + 1]) / (p + 1) for p in range(R) if rel[p]) / R
    return {'knn': knn / len(pts), 'p_at_1': p1 / n_q, 'r_precision': rp / n_q, 'map_at_r': ap / n_q}


@pytest.mark.parametrize('seed,k,chunk', [(0, 1, 1), (1, 3, 7), (2, 5, 64), (3, 4, 1024)])
def test_metrics_equal_loop_with_ties(seed, k, chunk):
    "On a grid, where distances tie everywhere, every metric equals the formulas with ties to the smaller index."
    x, y = _grid(seed)
    ours, theirs = neighbour_metrics(x, y, k, chunk_size=chunk), _loop(x, y, k)
    for m in theirs: assert ours[m] == pytest.approx(theirs[m], abs=1e-12), m
    assert knn_accuracy(x, y, k, chunk_size=chunk) == ours['knn']
    assert neighbour_metrics(x.float(), y, k, chunk_size=chunk) == ours     # exact distances: float32 orders alike


@pytest.mark.parametrize('chunk', [1, 5, 33, 500])
def test_neighbours_equal_stable_sort(chunk):
    "The neighbours of every row are the first m of a stable sort of its full row, for any block size."
    x, _ = _grid(4, 50)
    full = torch.cdist(x, x).fill_diagonal_(math.inf).sort(dim=1, stable=True).indices
    for m in (1, 3, 49):
        got = list(neighbour_blocks(x, m, chunk))
        assert [i for i, _ in got] == list(range(0, 50, chunk))
        assert torch.equal(torch.cat([b for _, b in got]), full[:, :m])
    need = torch.arange(50) % 7                                   # per-row counts: each block takes its rows' largest
    for i, b in neighbour_blocks(x, need, chunk):
        assert b.shape[1] == int(need[i:i + chunk].max())
        assert torch.equal(b, full[i:i + chunk, :b.shape[1]])


def test_knn_matches_sklearn():
    g = torch.Generator().manual_seed(5)
    y = torch.randint(0, 6, (250,), generator=g)
    x = torch.randn(250, 4, generator=g) + torch.randn(6, 4, generator=g)[y]
    for k in (1, 4, 9):
        theirs = accuracy_score(y.numpy(), KNeighborsClassifier(k).fit(x.double().numpy(), y.numpy()).predict(None))
        assert knn_accuracy(x.double(), y, k, chunk_size=31) == pytest.approx(theirs, abs=1e-12)


def test_knn_accuracy_chunk_is_deprecated():
    x, y = _grid(6)
    with pytest.warns(DeprecationWarning, match='chunk_size'): old = knn_accuracy(x, y, 3, chunk=4)
    assert old == knn_accuracy(x, y, 3, chunk_size=4)


# ---------------------------------------------------------------- singletons, degenerate and bad input
def test_singletons_left_out_of_retrieval():
    "A query alone in its class is left out of P@1, R-precision and MAP@R, but counts in the k-NN accuracy."
    x, y = _grid(7)
    without = neighbour_metrics(x[1:], y[1:], k=1)
    with_lone = neighbour_metrics(x, y, k=1)
    loop = _loop(x, y, 1)
    for m in RETRIEVAL_METRICS: assert with_lone[m] == pytest.approx(loop[m], abs=1e-12)
    assert with_lone['knn'] == pytest.approx(loop['knn'], abs=1e-12)
    assert without['knn'] != with_lone['knn']                    # the lone sample is a query of the k-NN vote (always wrong)
    all_lone = neighbour_metrics(x[:5], torch.arange(5), k=2)
    assert all_lone['knn'] == 0 and all(math.isnan(all_lone[m]) for m in RETRIEVAL_METRICS)
    one = neighbour_metrics(x[:1], y[:1], k=None)
    assert all(math.isnan(v) for v in one.values())


def test_bad_input():
    x, y = _grid(8)
    with pytest.raises(ValueError, match='k must be in 1..59'): neighbour_metrics(x, y, k=60)
    with pytest.raises(TypeError, match='k must be a positive int'): neighbour_metrics(x, y, k=2.5)
    with pytest.raises(ValueError, match='chunk_size'): neighbour_metrics(x, y, chunk_size=0)
    with pytest.raises(ValueError, match='2-D'): neighbour_metrics(x[:, 0], y)
    with pytest.raises(ValueError, match='NaN'): neighbour_metrics(x.masked_fill(x > 2, math.nan), y)
    with pytest.raises(ValueError, match='chunk_size'): EmbeddingStore(chunk_size=-1)
    with pytest.raises(ValueError, match='unknown metric'): EmbeddingStore().compute('p@1')


def test_nan_rows_rank_last_when_unchecked():
    "With value checks off, a NaN embedding (a diverged run) does not break the pass: it ranks after every number."
    x, y = _grid(9)
    xn = x.clone()
    xn[3] = math.nan
    set_default_validate_args(False)
    try:
        blocks = torch.cat([b for _, b in neighbour_blocks(xn, 59, 16)])
        res = neighbour_metrics(xn, y, 3, chunk_size=16)
    finally: set_default_validate_args(True)
    for i, row in enumerate(blocks.tolist()): assert sorted(row) == [j for j in range(60) if j != i]
    assert (blocks[torch.arange(60) != 3, -1] == 3).all()      # last for every other sample
    assert all(math.isfinite(v) for v in res.values())


# ---------------------------------------------------------------- the store: one pass, bounded memory
def _filled_store(x, y, **kwargs):
    store = EmbeddingStore(**kwargs)
    for s in range(0, len(x), 100): store.add(x[s:s + 100], y[s:s + 100], F.one_hot(y[s:s + 100], int(y.max()) + 1).float())
    return store


def test_store_one_neighbour_pass(monkeypatch):
    "k-NN accuracy and the three retrieval metrics come from one pass over the neighbour blocks, equal to the functions."
    x, y = _clustered(11, 300)
    calls = []
    orig = metrics.neighbour_blocks
    monkeypatch.setattr(metrics, 'neighbour_blocks', lambda *a, **k: calls.append(a[1:]) or orig(*a, **k))
    store = _filled_store(x, y, chunk_size=64)
    vals = {m: store.compute(m) for m in WHOLE_SET_METRICS}
    assert len(calls) == 1
    assert store.compute('map_at_r') == vals['map_at_r'] and len(calls) == 1          # cached
    store.add(x[:10], y[:10])                                     # a new batch empties the cache; no logits: no top1
    assert math.isnan(store.compute('top1')) and not math.isnan(store.compute('knn')) and len(calls) == 2
    xu = F.normalize(x, dim=1)
    for m, v in neighbour_metrics(xu, y, 5, chunk_size=64).items(): assert vals[m] == v, m
    assert vals['silhouette'] == pytest.approx(silhouette_score(xu, y).item(), abs=1e-6)


def test_store_small_pass():
    "Fewer samples than k + 1: no k-NN accuracy (NaN), the retrieval metrics still defined."
    x, y = _grid(12, 5)
    y = torch.tensor([0, 0, 1, 1, 1])
    store = _filled_store(x, y, knn_k=5)
    assert math.isnan(store.compute('knn'))
    assert store.compute('p_at_1') == neighbour_metrics(F.normalize(x.float(), dim=1), y, None)['p_at_1']


def test_whole_set_metrics_forwards_chunk_size():
    assert 'chunk_size' in inspect.signature(whole_set_metrics).parameters
    mets = whole_set_metrics(('knn', 'map_at_r'), chunk_size=17)
    assert mets[0].store is mets[1].store and mets[0].store.chunk_size == 17
    assert set(RETRIEVAL_METRICS) <= set(WHOLE_SET_METRICS)


class _LargestTensor(TorchDispatchMode):
    "Records the most elements of any tensor an operator returns."
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor): self.largest = max(self.largest, t.numel())
        return out


def test_store_never_builds_n_by_n():
    "Every tensor the store's metrics create stays O(chunk_size × N); the detector does see an N × N matrix."
    n, chunk = 800, 50
    x, y = _clustered(13, n, n_classes=4, singletons=0)
    store = _filled_store(x, y, chunk_size=chunk)
    with _LargestTensor() as seen:
        for m in WHOLE_SET_METRICS: store.compute(m)
    assert seen.largest <= 2 * chunk * n, seen.largest          # the neighbour indices of a block: (chunk · m, 2)
    with _LargestTensor() as unchunked: silhouette_score(x, y)
    assert unchunked.largest >= n * n
