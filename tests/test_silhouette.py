"Silhouette: the exact score against scikit-learn, the soft score against a plain Python loop, its limit, gradients, dtypes, degenerate and bad input."
import math

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
import torch.nn.functional as F
from hypothesis import given, settings, assume, HealthCheck, strategies as st

from silhouette_nb.distances import DISTANCES, encode_labels, one_hot, mean_distance_to_classes
from silhouette_nb.silhouette import (SoftSilhouetteLoss, class_mean_distances, silhouette_samples, silhouette_score, soft_min, soft_silhouette_loss, soft_silhouette_samples, soft_silhouette_score)

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DIST_NAMES = sorted(DISTANCES)


# ---------------------------------------------------------------- oracles: the formulas, one sample and class at a time
def _dist(u, v, distance):
    if distance == 'cosine':
        nu, nv = math.sqrt(sum(a * a for a in u)), math.sqrt(sum(b * b for b in v))
        cos = sum(a * b for a, b in zip(u, v)) / (nu * nv) if nu > 0 and nv > 0 else 0.
        return min(2., max(0., 1 - cos))
    sq = sum((a - b) ** 2 for a, b in zip(u, v))
    return sq if distance == 'sqeuclidean' else math.sqrt(sq)


def loop_silhouette(x, y, distance='euclidean', temperature=None):
    """Per-sample (s, a, b) with Python floats. a(i): mean distance to the rest of i's class; b(i): the minimum over the
    other classes present of the mean distance (temperature None), or the log-mean-exp soft-min
    b = -tau log (1/K_i) sum_c exp(-m_c / tau); s = (b - a) / max(a, b), 0 for singletons and where max(a, min_c m_c) = 0
    (the exact score's convention, decided on the hard minimum also for the soft score)."""
    x, y = x.detach().double().tolist(), y.tolist()
    B = len(y)
    D = [[_dist(x[i], x[j], distance) for j in range(B)] for i in range(B)]
    out = []
    for i in range(B):
        own = [j for j in range(B) if y[j] == y[i] and j != i]
        m = [sum(D[i][j] for j in range(B) if y[j] == c) / y.count(c) for c in sorted(set(y)) if c != y[i]]
        lo = min(m)
        b = lo if temperature is None else lo - temperature * math.log(sum(math.exp(-(v - lo) / temperature) for v in m) / len(m))
        if not own:
            out.append((0., 0., b)); continue
        a = sum(D[i][j] for j in own) / len(own)
        out.append(((b - a) / max(a, b) if max(a, lo) > 0 else 0., a, b))
    return out


def naive_class_means(x, y, distance):
    "m_i(c) from the full pairwise matrix (explicit differences) and the one-hot matrix, leaving i out of its class."
    codes, classes = encode_labels(y)
    eye = torch.eye(len(x), dtype=torch.bool)
    if distance == 'cosine': D = (1 - F.cosine_similarity(x[:, None], x[None], dim=-1)).masked_fill(eye, 0)
    else:
        d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
        D = d2.masked_fill(eye, 0) if distance == 'sqeuclidean' else d2.masked_fill(eye, 1).sqrt().masked_fill(eye, 0)
    return mean_distance_to_classes(D, one_hot(codes, len(classes), x.dtype))


# ---------------------------------------------------------------- strategies
@st.composite
def labellings(draw, min_b=3, max_b=14, all_distinct_ok=False):
    "Labels with 2 <= n_labels <= B - 1 (what sklearn accepts), or up to B; non-contiguous label values."
    B = draw(st.integers(min_b, max_b))
    k = draw(st.integers(2, B if all_distinct_ok else B - 1))
    pattern = draw(st.sampled_from(['random', 'singletons', 'balanced']))
    if pattern == 'random': idx = list(range(k)) + draw(st.lists(st.integers(0, k - 1), min_size=B - k, max_size=B - k))
    elif pattern == 'singletons': idx = list(range(k)) + [0] * (B - k)      # one class, the rest singletons
    else: idx = [i % k for i in range(B)]
    values = draw(st.lists(st.integers(0, 1000), min_size=k, max_size=k, unique=True))
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(draw(st.integers(0, 999))))
    return torch.tensor([values[idx[p]] for p in perm.tolist()])


@st.composite
def embeddings(draw, y, grid=True, normalized=False):
    "float64 embeddings for labels y: Gaussian, class clusters (well separated rows), or small integers (exact ties and duplicates)."
    B, d = len(y), draw(st.integers(1, 6))
    kinds = ['gauss', 'clusters'] + (['grid'] if grid else [])
    kind = draw(st.sampled_from(kinds))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if kind == 'grid':
        x = torch.randint(-2, 3, (B, d), generator=g).double()
    else:
        x = torch.randn(B, d, generator=g, dtype=torch.float64)
        if kind == 'clusters':
            codes, classes = encode_labels(y)
            x = 3 * torch.randn(len(classes), d, generator=g, dtype=torch.float64)[codes] + 0.5 * x
        x = x * 10 ** draw(st.floats(-2, 2))
        x = F.normalize(x, dim=1) if normalized else x
        # no near-duplicates off the grid: the Gram route's error in a distance is about eps * |x|^2 / d
        D = ((x[:, None] - x[None]) ** 2).sum(-1).sqrt().masked_fill(torch.eye(B, dtype=torch.bool), math.inf)
        assume(bool(D.min() > 1e-3 * x.abs().max()))
    return x


@st.composite
def batches(draw, grid=True, normalized=False, **kw):
    y = draw(labellings(**kw))
    return draw(embeddings(y, grid, normalized)), y


temperatures = st.sampled_from([1e-3, 0.01, 0.1, 1.0, 10.0])


# ---------------------------------------------------------------- the exact silhouette against scikit-learn
@SETTINGS
@given(st.data(), st.sampled_from(DIST_NAMES))
def test_silhouette_matches_sklearn(data, distance):
    # small integers make every distance exact for the (squared) Euclidean routes, so duplicates and ties are exact;
    # for the cosine distance parallel integer vectors leave rounding noise in the ties, so Gaussian points only
    x, y = data.draw(batches(grid=distance != 'cosine'))
    ours_s, ours = silhouette_samples(x, y, distance), silhouette_score(x, y, distance)
    assert ours_s.dtype == ours.dtype == torch.float64 and ours_s.shape == y.shape and ours.ndim == 0
    theirs_s = skm.silhouette_samples(x.numpy(), y.numpy(), metric=distance)
    theirs = skm.silhouette_score(x.numpy(), y.numpy(), metric=distance)
    np.testing.assert_allclose(ours_s.numpy(), theirs_s, atol=1e-6, rtol=0)
    assert abs(ours.item() - theirs) < 1e-6


@SETTINGS
@given(st.data(), st.sampled_from(DIST_NAMES))
def test_silhouette_matches_loop(data, distance):
    x, y = data.draw(batches(grid=distance != 'cosine'))
    ref = [s for s, _, _ in loop_silhouette(x, y, distance)]
    torch.testing.assert_close(silhouette_samples(x, y, distance), torch.tensor(ref, dtype=torch.float64),
                               atol=1e-9, rtol=0)


@SETTINGS
@given(st.data(), st.sampled_from(DIST_NAMES), st.floats(-3, 3))
def test_silhouette_invariances(data, distance, log_scale):
    "Permuting the samples permutes s(i); renaming the classes and rescaling the embeddings change nothing."
    x, y = data.draw(batches(grid=False))
    s = silhouette_samples(x, y, distance)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99))))
    torch.testing.assert_close(silhouette_samples(x[perm], y[perm], distance), s[perm], atol=1e-9, rtol=0)
    codes, classes = encode_labels(y)
    new = torch.tensor(data.draw(st.lists(st.integers(0, 10**6), min_size=len(classes), max_size=len(classes),
                                          unique=True)))
    torch.testing.assert_close(silhouette_samples(x, new[codes], distance), s, atol=1e-12, rtol=0)
    torch.testing.assert_close(silhouette_samples(x * 10 ** log_scale, y, distance), s, atol=1e-8, rtol=0)


def test_silhouette_matches_sklearn_float32_realistic_size():
    torch.manual_seed(0)
    centres = torch.randn(10, 32)
    y = torch.randint(0, 10, (400,))
    x = centres[y] + torch.randn(400, 32)
    for distance in DIST_NAMES:
        ours = silhouette_score(x, y, distance)
        assert ours.dtype == torch.float32
        theirs = skm.silhouette_score(x.double().numpy(), y.numpy(), metric=distance)
        assert abs(ours.item() - theirs) < 1e-5


def test_fewer_than_two_classes_raises():
    x = torch.randn(5, 3, dtype=torch.float64)
    for fn in (silhouette_score, silhouette_samples, soft_silhouette_score, soft_silhouette_samples):
        with pytest.raises(ValueError, match='at least 2 classes'): fn(x, torch.full((5,), 3))
        with pytest.raises(ValueError, match='at least 2 classes'): fn(x[:1], torch.tensor([0]))
    with pytest.raises(ValueError):   # sklearn refuses it too
        skm.silhouette_score(x.numpy(), np.full(5, 3))


@pytest.mark.parametrize('distance', DIST_NAMES)
def test_all_singletons_score_zero(distance):
    "n_labels == n_samples: sklearn raises; the notebook defines every s(i) = 0 (singletons), so score 0, loss 1."
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.tensor([5, 1, 9, 0, 33, 2])
    with pytest.raises(ValueError, match='Number of labels'):
        skm.silhouette_score(x.numpy(), y.numpy(), metric=distance)
    assert torch.equal(silhouette_samples(x, y, distance), torch.zeros(6, dtype=torch.float64))
    assert silhouette_score(x, y, distance).item() == 0
    assert soft_silhouette_score(x, y, 0.1, distance).item() == 0
    e = x.clone().requires_grad_()
    loss = soft_silhouette_loss(e, y, 0.1, distance)
    loss.backward()
    assert loss.item() == 1 and torch.equal(e.grad, torch.zeros_like(e))


# ---------------------------------------------------------------- the soft silhouette against the loop
@SETTINGS
@given(st.data(), st.sampled_from(DIST_NAMES), temperatures)
def test_soft_silhouette_matches_loop(data, distance, tau):
    x, y = data.draw(batches(grid=distance != 'cosine', min_b=2, max_b=12, all_distinct_ok=True))
    ref = torch.tensor([s for s, _, _ in loop_silhouette(x, y, distance, tau)], dtype=torch.float64)
    ours = soft_silhouette_samples(x, y, tau, distance)
    assert ours.dtype == torch.float64 and ours.shape == y.shape
    torch.testing.assert_close(ours, ref, atol=1e-9, rtol=1e-9)
    score = soft_silhouette_score(x, y, tau, distance)
    assert score.ndim == 0 and abs(score.item() - ref.mean().item()) < 1e-9
    assert (ours.abs() <= 1 + 1e-12).all()


@SETTINGS
@given(st.data(), st.sampled_from(DIST_NAMES), temperatures)
def test_soft_silhouette_bound_by_the_exact_one(data, distance, tau):
    """min <= b_tau <= min + tau log K_i, and s is increasing in b with slope at most 1/max(a, b), so
    0 <= s_tau(i) - s(i) <= tau log K_i / max(a(i), b(i)) wherever max(a, b) > 0."""
    x, y = data.draw(batches(grid=False))
    s, s_tau = silhouette_samples(x, y, distance), soft_silhouette_samples(x, y, tau, distance)
    K_i = len(y.unique()) - 1
    for i, (si, a, b) in enumerate(loop_silhouette(x, y, distance)):
        if (y == y[i]).sum() == 1 or max(a, b) == 0: continue
        gap = (s_tau[i] - s[i]).item()
        assert -1e-12 <= gap <= tau * math.log(K_i) / max(a, b) + 1e-12


@SETTINGS
@given(st.data(), st.sampled_from(DIST_NAMES))
def test_soft_silhouette_tends_to_exact(data, distance):
    "At tau = 1e-4 with distances of order one (unit vectors, every max(a, b) >= 0.5) the two agree to 1e-3."
    y = data.draw(labellings(min_b=4))
    x = data.draw(embeddings(y, grid=False, normalized=True))
    assume(x.shape[1] > 1)
    parts = loop_silhouette(x, y, distance)
    assume(all(max(a, b) >= 0.5 for (s, a, b), n in zip(parts, (y[:, None] == y).sum(1)) if n > 1))
    assert abs(soft_silhouette_score(x, y, 1e-4, distance).item() - silhouette_score(x, y, distance).item()) < 1e-3


def test_soft_silhouette_limit_fixed_batch():
    torch.manual_seed(0)
    x = F.normalize(torch.randn(60, 8, dtype=torch.float64), dim=1)
    y = torch.randint(0, 5, (60,))
    for distance in DIST_NAMES:
        exact = silhouette_score(x, y, distance).item()
        gaps = [abs(soft_silhouette_score(x, y, t, distance).item() - exact) for t in (1., 0.1, 0.01, 1e-3, 1e-4)]
        assert gaps[-1] < 1e-3 and all(g2 <= g1 for g1, g2 in zip(gaps, gaps[1:]))


@SETTINGS
@given(st.integers(1, 6), st.integers(1, 7), st.sampled_from([1e-4, 0.01, 1.0, 100.]), st.integers(0, 2**31 - 1))
def test_soft_min_is_log_mean_exp_over_finite_entries(B, K, tau, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(B, K, generator=g, dtype=torch.float64) * 3
    mask = torch.rand(B, K, generator=g) < 0.4
    mask[:, 0] = False
    m = m.masked_fill(mask, math.inf)
    ours = soft_min(m, tau)
    for i in range(B):
        vals = [v for v in m[i].tolist() if math.isfinite(v)]
        lo = min(vals)
        ref = lo - tau * math.log(sum(math.exp(-(v - lo) / tau) for v in vals) / len(vals))
        assert abs(ours[i].item() - ref) < 1e-12 * max(1, tau)
        assert lo - 1e-12 <= ours[i].item() <= min(lo + tau * math.log(len(vals)), sum(vals) / len(vals)) + 1e-12


# ---------------------------------------------------------------- the class aggregates behind it: fused vs naive
@SETTINGS
@given(st.data(), st.sampled_from(DIST_NAMES))
def test_class_mean_distances_equal_naive(data, distance):
    "The fused Euclidean sums and the O(BKd) squared-Euclidean path equal the one-hot product with the full matrix."
    x, y = data.draw(batches(grid=False, min_b=2, max_b=12, all_distinct_ok=True))
    x = x / x.abs().max()
    codes, classes = encode_labels(y)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    M, Y = class_mean_distances(a, codes, len(classes), distance)
    M_naive = naive_class_means(b, y, distance)
    assert torch.equal(Y, one_hot(codes, len(classes), torch.float64))
    torch.testing.assert_close(M, M_naive, atol=1e-10, rtol=1e-10)
    w = torch.randn(M.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (M * w).sum().backward(); (M_naive * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-8, rtol=1e-8)


def test_unknown_distance():
    x, y = torch.randn(4, 2), torch.tensor([0, 0, 1, 1])
    for call in (lambda: class_mean_distances(x, y, 2, 'l1'), lambda: silhouette_score(x, y, 'l1'),
                 lambda: soft_silhouette_score(x, y, 0.1, 'l1'), lambda: soft_silhouette_loss(x, y, 0.1, 'l1'),
                 lambda: SoftSilhouetteLoss(distance='l1')):
        with pytest.raises(ValueError, match='unknown distance'): call()


# ---------------------------------------------------------------- gradients
GRAD_LABELS = [[0, 0, 0, 1, 1, 2, 2], [4, 4, 9, 9, 9, 9, 1], [0, 1, 1, 2, 2, 3, 3]]   # with and without singletons


@pytest.mark.parametrize('labels', GRAD_LABELS)
@pytest.mark.parametrize('tau', [0.1, 1.0])
@pytest.mark.parametrize('distance', DIST_NAMES)
def test_gradcheck_soft_silhouette_score(distance, tau, labels):
    torch.manual_seed(0)
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(labels)
    assert torch.autograd.gradcheck(lambda x: soft_silhouette_score(x, y, tau, distance), (x,))
    assert torch.autograd.gradcheck(lambda x: soft_silhouette_samples(x, y, tau, distance), (x,))


@pytest.mark.parametrize('normalize', [True, False])
@pytest.mark.parametrize('distance', DIST_NAMES)
def test_gradcheck_loss(distance, normalize):
    torch.manual_seed(1)
    x = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 3])
    loss = SoftSilhouetteLoss(temperature=0.1, distance=distance, normalize=normalize)
    assert torch.autograd.gradcheck(lambda x: loss(x, y), (x,))
    assert torch.autograd.gradcheck(lambda x: soft_silhouette_loss(x, y, 0.1, distance, normalize), (x,))


@pytest.mark.parametrize('distance', DIST_NAMES)
def test_gradcheck_exact_silhouette(distance):
    "The exact score is piecewise smooth; random points are away from its kinks."
    torch.manual_seed(2)
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    assert torch.autograd.gradcheck(lambda x: silhouette_score(x, y, distance), (x,))


@SETTINGS
@given(st.data(), st.sampled_from(DIST_NAMES), temperatures)
def test_gradient_matches_autograd_of_naive_route(data, distance, tau):
    "The full gradient through the fused paths equals autograd through explicit differences and the formula."
    x, y = data.draw(batches(grid=False, min_b=2, max_b=10, all_distinct_ok=True))
    x = x / x.abs().max()
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    soft_silhouette_score(a, y, tau, distance).backward()
    M = naive_class_means(b, y, distance)
    codes, classes = encode_labels(y)
    Y = one_hot(codes, len(classes), torch.float64)
    own = M.gather(1, codes[:, None])[:, 0]
    bt = soft_min(M.masked_fill(Y > 0, math.inf), tau)
    n = Y.sum(0)[codes]
    den = torch.maximum(own, bt)
    ok = (n > 1) & (den > 0)
    torch.where(ok, (bt - own) / torch.where(ok, den, 1.), 0.).mean().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-7, rtol=1e-7)


# ---------------------------------------------------------------- module and functional, dtypes
@SETTINGS
@given(st.data(), st.sampled_from(DIST_NAMES), temperatures, st.booleans())
def test_module_equals_functional(data, distance, tau, normalize):
    x, y = data.draw(batches(grid=False, min_b=2, max_b=12, all_distinct_ok=True))
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    lm = SoftSilhouetteLoss(tau, distance, normalize)(a, y)
    lf = 1 - soft_silhouette_score(F.normalize(b, dim=1) if normalize else b, y, tau, distance)
    assert lm.dtype == torch.float64 and lm.ndim == 0
    torch.testing.assert_close(lm, lf, atol=1e-12, rtol=0)
    lm.backward(); lf.backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-10, rtol=1e-10)


def test_module_defaults_and_repr():
    m = SoftSilhouetteLoss()
    assert (m.temperature, m.distance, m.normalize) == (0.01, 'euclidean', True)
    assert repr(m) == "SoftSilhouetteLoss(temperature=0.01, distance='euclidean', normalize=True)"
    assert list(m.parameters()) == []


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_output_dtypes_follow_input(dtype):
    x, y = torch.randn(8, 3, dtype=dtype), torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
    for out in (silhouette_samples(x, y), silhouette_score(x, y), soft_silhouette_samples(x, y),
                soft_silhouette_score(x, y), soft_silhouette_loss(x, y), SoftSilhouetteLoss()(x, y),
                soft_silhouette_loss(x, torch.zeros(8, dtype=torch.long))):
        assert out.dtype == dtype


@pytest.mark.parametrize('normalize', [True, False])
@pytest.mark.parametrize('distance', DIST_NAMES)
@pytest.mark.parametrize('dtype,atol', [(torch.float16, 1e-4), (torch.bfloat16, 1e-3)])
def test_half_precision(dtype, atol, distance, normalize):
    "Half precision is computed in float32: float32 loss, gradient in the input dtype, close to the float32 loss."
    torch.manual_seed(0)
    x32 = torch.randn(64, 16)
    y = torch.randint(0, 5, (64,))
    xh = x32.to(dtype).requires_grad_()
    lh = soft_silhouette_loss(xh, y, 0.01, distance, normalize)
    lh.backward()
    assert lh.dtype == torch.float32 and torch.isfinite(lh)
    assert xh.grad.dtype == dtype and torch.isfinite(xh.grad).all() and xh.grad.abs().sum() > 0
    # exactly the float32 computation on the rounded inputs, and close to the float32 loss on the original ones
    torch.testing.assert_close(lh, soft_silhouette_loss(xh.detach().float(), y, 0.01, distance, normalize))
    torch.testing.assert_close(lh, soft_silhouette_loss(x32, y, 0.01, distance, normalize), atol=atol, rtol=0)
    s = silhouette_score(xh.detach(), y, distance)
    assert s.dtype == torch.float32
    torch.testing.assert_close(s, silhouette_score(x32, y, distance), atol=10 * atol, rtol=0)


# ---------------------------------------------------------------- degenerate batches
@pytest.mark.parametrize('normalize', [True, False])
@pytest.mark.parametrize('distance', DIST_NAMES)
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize('B', [1, 5])
def test_one_class_loss_is_zero_attached(B, dtype, distance, normalize):
    x = torch.randn(B, 3).to(dtype).requires_grad_()
    loss = SoftSilhouetteLoss(0.01, distance, normalize)(x, torch.full((B,), 7))
    assert loss.item() == 0 and loss.ndim == 0 and loss.requires_grad and loss.grad_fn is not None
    assert loss.dtype == (torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)
    loss.backward()
    assert x.grad is not None and x.grad.dtype == dtype and torch.equal(x.grad, torch.zeros_like(x))


def _finite_loss_and_grad(x, y, distance, normalize, tau=0.01):
    x = x.clone().requires_grad_()
    loss = soft_silhouette_loss(x, y, tau, distance, normalize)
    loss.backward()
    assert torch.isfinite(loss) and 0 <= loss.item() <= 2
    assert torch.isfinite(x.grad).all()
    return loss, x.grad


@pytest.mark.parametrize('normalize', [True, False])
@pytest.mark.parametrize('distance', DIST_NAMES)
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_duplicates_and_singletons_are_finite(dtype, distance, normalize):
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    same = torch.randn(1, 4, generator=g).repeat(6, 1).to(dtype)                # all rows identical
    _finite_loss_and_grad(same, y, distance, normalize)
    some = torch.randn(8, 4, generator=g).to(dtype)
    some[1] = some[0]; some[5] = some[4]; some[6] = some[2]                    # duplicates within and across classes
    y8 = torch.tensor([0, 0, 1, 1, 2, 2, 0, 3])                                 # class 3 is a singleton
    _finite_loss_and_grad(some, y8, distance, normalize)
    _finite_loss_and_grad(some, torch.tensor([0, 1, 2, 3, 4, 5, 6, 6]), distance, normalize)   # mostly singletons
    _finite_loss_and_grad(some, y8, distance, normalize, tau=1e-4)              # a nearly hard minimum


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize('distance,normalize', [
    ('euclidean', False), ('sqeuclidean', False), ('cosine', False),
    ('euclidean', True), ('sqeuclidean', True), ('cosine', True)])
def test_zero_embedding_has_a_bounded_gradient(dtype, distance, normalize):
    "An all-zero embedding (a dead ReLU output) must not blow up the gradient: every entry stays below 1e3."
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, generator=g).to(dtype)
    x[1] = x[0]; x[3] = 0
    _, grad = _finite_loss_and_grad(x, torch.tensor([0, 0, 1, 1, 2, 2, 0, 3]), distance, normalize)
    assert grad.abs().max() < 1e3


@pytest.mark.parametrize('distance', ['euclidean', 'sqeuclidean'])
def test_exact_duplicates_on_a_grid(distance):
    "Integer embeddings make the distances exact: classes stacked on one point score 0, apart they score 1."
    x = torch.tensor([[0., 0.], [0, 0], [0, 0], [2, 1], [2, 1], [2, 1]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    assert silhouette_score(x, y, distance).item() == 1
    assert silhouette_score(torch.zeros(6, 2, dtype=torch.float64), y, distance).item() == 0
    e = x.clone().requires_grad_()
    loss = soft_silhouette_loss(e, y, 0.01, distance, normalize=False)
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(e.grad).all()


# ---------------------------------------------------------------- bad input
BAD = [
    (lambda: (torch.randn(4, 3), torch.tensor([0, 1, 1])), 'differ in length'),
    (lambda: (torch.randn(3, 3), torch.tensor([0, 1, 1, 0])), 'differ in length'),
    (lambda: (torch.randn(4), torch.tensor([0, 1, 1, 0])), r'2-D \(B, d\)'),
    (lambda: (torch.randn(4, 3, 1), torch.tensor([0, 1, 1, 0])), r'2-D \(B, d\)'),
    (lambda: (torch.randn(4, 3), torch.tensor([[0, 1], [1, 0]])), r'1-D \(B,\)'),
    (lambda: (torch.randn(4, 3), torch.tensor([0., 1, 1, 0])), 'labels must be integers'),
    (lambda: (torch.randn(4, 3), torch.tensor([0.5, 1, 1, 0])), 'labels must be integers'),
    (lambda: (torch.randn(4, 3), torch.tensor([0, -1, 1, 0])), 'non-negative'),
    (lambda: (torch.randn(0, 3), torch.zeros(0, dtype=torch.long)), 'empty batch'),
    (lambda: (torch.randn(4, 0), torch.tensor([0, 1, 1, 0])), 'zero dimensions'),
    (lambda: (torch.arange(12).reshape(4, 3), torch.tensor([0, 1, 1, 0])), 'floating point'),
    (lambda: (torch.full((4, 3), float('nan')), torch.tensor([0, 1, 1, 0])), 'NaN'),
]
FUNCS = {
    'silhouette_score': lambda x, y: silhouette_score(x, y),
    'silhouette_samples': lambda x, y: silhouette_samples(x, y),
    'soft_silhouette_score': lambda x, y: soft_silhouette_score(x, y),
    'soft_silhouette_loss': lambda x, y: soft_silhouette_loss(x, y),
    'SoftSilhouetteLoss': lambda x, y: SoftSilhouetteLoss()(x, y),
}


@pytest.mark.parametrize('fn', FUNCS.values(), ids=FUNCS.keys())
@pytest.mark.parametrize('make,match', BAD)
def test_bad_input_raises_value_error(make, match, fn):
    x, y = make()
    with pytest.raises(ValueError, match=match):
        fn(x, y)


@pytest.mark.parametrize('tau', [0., -1., float('nan')])
def test_bad_temperature(tau):
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    for call in (lambda: SoftSilhouetteLoss(temperature=tau), lambda: soft_silhouette_score(x, y, tau),
                 lambda: soft_silhouette_samples(x, y, tau), lambda: soft_silhouette_loss(x, y, tau)):
        with pytest.raises(ValueError, match='temperature'): call()


@pytest.mark.parametrize('kw,match', [({'temperature': 0.}, 'temperature'), ({'temperature': -1.}, 'temperature'),
                                      ({'distance': 'l1'}, 'unknown distance')])
def test_bad_arguments_raise_on_a_one_class_batch(kw, match):
    with pytest.raises(ValueError, match=match):
        soft_silhouette_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), **kw)


# ---------------------------------------------------------------- one checking layer
BAD_TEMPERATURES = [(math.inf, ValueError), (True, TypeError), ('0.1', TypeError), (None, TypeError), (0, ValueError),
                    (-1, ValueError), (math.nan, ValueError), (1e-39, ValueError)]


@pytest.mark.parametrize('tau,err', BAD_TEMPERATURES)
def test_temperature_has_one_rule_everywhere(tau, err):
    "The same error as `check_temperature` gives, naming temperature, from the module and every function."
    from silhouette_nb.validation import check_temperature
    with pytest.raises(err) as expected: check_temperature(tau)
    x, y = torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])
    for call in (lambda: SoftSilhouetteLoss(temperature=tau), lambda: SoftSilhouetteLoss(tau),
                 lambda: soft_silhouette_loss(x, y, tau), lambda: soft_silhouette_score(x, y, tau),
                 lambda: soft_silhouette_samples(x, y, temperature=tau)):
        with pytest.raises(err, match='temperature') as got: call()
        assert str(got.value) == str(expected.value)


@pytest.mark.parametrize('fn', FUNCS.values(), ids=FUNCS.keys())
def test_batch_checked_once_per_call(fn, monkeypatch):
    "check_batch (with its value checks) runs once per call, at the entry point."
    import silhouette_nb.silhouette as sil
    calls = []
    real = sil.check_batch
    monkeypatch.setattr(sil, 'check_batch', lambda *a, **k: calls.append(1) or real(*a, **k))
    fn(torch.randn(8, 3), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    assert len(calls) == 1


@pytest.mark.parametrize('fn', FUNCS.values(), ids=FUNCS.keys())
def test_validate_args_off_skips_the_value_checks(fn):
    "With validation off (per call or package-wide) NaN embeddings and negative labels are not looked at: no error."
    from silhouette_nb.validation import set_default_validate_args
    nan, y, neg = torch.full((4, 3), math.nan), torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, -1, -1])
    with pytest.raises(ValueError, match='NaN'): fn(nan, y)
    with pytest.raises(ValueError, match='non-negative'): fn(torch.randn(4, 3), neg)
    set_default_validate_args(False)
    try: assert fn(nan, y).ndim <= 1 and torch.isfinite(fn(torch.randn(4, 3), neg)).all()
    finally: set_default_validate_args(True)
    for f in (silhouette_score, soft_silhouette_score, soft_silhouette_loss, SoftSilhouetteLoss(validate_args=False)):
        kw = {} if isinstance(f, torch.nn.Module) else dict(validate_args=False)
        assert f(nan, y, **kw).ndim == 0 and torch.isfinite(f(torch.randn(4, 3), neg, **kw))


# ---------------------------------------------------------------- mixed precision, torch.compile, host synchronisation
def autocast_run(fn, dtype, device='cpu', backward_inside=False, shape=(64, 16)):
    "dtype of the embeddings, loss and weight gradient of `fn` on a linear layer's output, under autocast with `dtype` (None: float32)."
    torch.manual_seed(0)
    net = torch.nn.Linear(16, 32).to(device)
    x, y = torch.randn(*shape, device=device), torch.randint(0, 5, shape[:1], device=device)
    with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
        emb = net(x)
        loss = fn(emb, y)
        if backward_inside: loss.backward()
    if not backward_inside: loss.backward()
    return emb.dtype, loss, net.weight.grad


def check_autocast(fn, dtype, device='cpu', backward_inside=False, shape=(64, 16)):
    "Half-precision embeddings, a float32 loss within 1e-2 of the float32 one, finite non-zero gradients."
    _, l32, _ = autocast_run(fn, None, device, shape=shape)
    emb_dtype, l, g = autocast_run(fn, dtype, device, backward_inside, shape)
    assert emb_dtype == dtype and l.dtype == torch.float32
    assert abs(l.item() - l32.item()) <= 1e-2 * abs(l32.item())
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def check_no_sync_cuda(fn, x, y):
    "On a GPU, torch's own detector: any synchronisation in forward or backward raises."
    torch.cuda.set_sync_debug_mode('error')
    try: fn(x.cuda().requires_grad_(), y.cuda()).backward()
    finally: torch.cuda.set_sync_debug_mode('default')


AUTOCAST_FNS = {f'{name}-{distance}': (lambda f, distance: lambda e, y: f(e, y, distance=distance))(f, distance)
                for name, f in [('loss', soft_silhouette_loss), ('score', silhouette_score), ('soft', soft_silhouette_score)]
                for distance in DIST_NAMES}
AUTOCAST_FNS.update({'loss-chunked': lambda e, y: soft_silhouette_loss(e, y, chunk_size=20),
                     'module-n_classes': SoftSilhouetteLoss(n_classes=5, validate_args=False)})


@pytest.mark.parametrize('backward_inside', [False, True])
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('name', list(AUTOCAST_FNS))
def test_autocast(name, dtype, backward_inside):
    "Under autocast the embeddings are half precision; the loss is computed in float32, returned in float32, close to float32."
    check_autocast(AUTOCAST_FNS[name], dtype, backward_inside=backward_inside)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('name', list(AUTOCAST_FNS))
def test_autocast_cuda(name, dtype):
    check_autocast(AUTOCAST_FNS[name], dtype, 'cuda')


HOT = {f'{distance}-chunk{chunk}': SoftSilhouetteLoss(distance=distance, chunk_size=chunk, n_classes=6, validate_args=False)
       for distance in DIST_NAMES for chunk in (None, 5)}


@pytest.mark.parametrize('name', list(HOT))
def test_no_host_sync_without_validation(name):
    "With n_classes and validation off, forward and backward read no value on the host (on a GPU: never wait for it)."
    from silhouette_nb.validation import host_syncs
    x, y = torch.randn(12, 4, requires_grad=True), torch.tensor([0, 0, 1, 1, 1, 3, 3, 3, 5, 5, 2, 2])
    with host_syncs() as s: HOT[name](x, y).backward()
    assert s.ops == []
    for f in (silhouette_score, soft_silhouette_score):
        with host_syncs() as s: f(x, y, n_classes=6, validate_args=False)
        assert s.ops == []


def test_host_syncs_are_counted():
    "A check of the check: validation reads values; without n_classes the number of classes present is read once."
    from silhouette_nb.validation import host_syncs
    x, y = torch.randn(12, 4, requires_grad=True), torch.randint(0, 4, (12,))
    with host_syncs() as s: SoftSilhouetteLoss(n_classes=6)(x, y)
    assert len(s.ops) >= 2
    with host_syncs() as s: SoftSilhouetteLoss(validate_args=False)(x, y).backward()
    assert s.ops == ['aten._local_scalar_dense']


@pytest.mark.parametrize('name', list(HOT))
def test_no_graph_break_without_validation(name):
    x, y = torch.randn(12, 4, requires_grad=True), torch.tensor([0, 0, 1, 1, 1, 3, 3, 3, 5, 5, 2, 2])
    torch._dynamo.reset()
    assert torch._dynamo.explain(HOT[name])(x, y).graph_break_count == 0
    assert torch._dynamo.explain(lambda x, y: silhouette_score(x, y, n_classes=6, validate_args=False))(x, y).graph_break_count == 0


def check_compiled_equals_eager(fn, x, y):
    "torch.compile (inductor, whole graph) gives the eager loss and gradient."
    torch._dynamo.reset()
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    lc = torch.compile(fn, fullgraph=True)(a, y); lc.backward()
    le = fn(b, y); le.backward()
    torch.testing.assert_close(lc, le, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-4)


@pytest.mark.slow
def test_compiled_equals_eager():
    check_compiled_equals_eager(SoftSilhouetteLoss(n_classes=5, validate_args=False), torch.randn(40, 8), torch.randint(0, 5, (40,)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('name', list(HOT))
def test_no_host_sync_cuda(name):
    check_no_sync_cuda(HOT[name], torch.randn(12, 4), torch.tensor([0, 0, 1, 1, 1, 3, 3, 3, 5, 5, 2, 2]))


# ---------------------------------------------------------------- edges
@pytest.mark.parametrize('distance', DIST_NAMES)
def test_soft_score_follows_the_exact_convention_at_a_equals_b_equals_zero(distance):
    "Two classes collapsed onto one point (dead-ReLU zero rows): a = b = 0, the exact score gives 0, so does the soft one."
    x = torch.tensor([[1., 0], [1, 0], [1, 0], [1, 0], [0, 1], [0, 1.5]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    exact = silhouette_samples(x, y, distance)
    assert (exact[:4] == 0).all()
    for tau in (1., 0.01, 1e-4):
        torch.testing.assert_close(soft_silhouette_samples(x, y, tau, distance)[:4], exact[:4], atol=0, rtol=0)
    torch.testing.assert_close(soft_silhouette_score(x, y, 1e-4, distance), silhouette_score(x, y, distance), atol=1e-3, rtol=0)
    e = x.clone().requires_grad_()
    soft_silhouette_loss(e, y, 0.01, distance, normalize=False).backward()
    assert torch.isfinite(e.grad).all()


@pytest.mark.parametrize('scale', [1e-30, 1e-20, 1e20, 1e30])
@pytest.mark.parametrize('distance', DIST_NAMES)
def test_normalised_loss_is_scale_invariant_in_float32(scale, distance):
    "Rows far beyond sqrt(float32 range) or below its square root normalise correctly: the loss does not change."
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    xs = (x * scale).requires_grad_()
    loss = soft_silhouette_loss(xs, y, 0.1, distance)
    loss.backward()
    torch.testing.assert_close(loss, soft_silhouette_loss(x, y, 0.1, distance), atol=1e-5, rtol=0)
    assert torch.isfinite(xs.grad).all() and (xs.grad != 0).any()


def test_labels_on_another_device_name_the_labels():
    x, y = torch.randn(4, 3, device='meta'), torch.tensor([0, 0, 1, 1])
    for call in (lambda: soft_silhouette_loss(x, y), lambda: silhouette_score(x, y), lambda: SoftSilhouetteLoss()(x, y)):
        with pytest.raises(ValueError, match='labels are on cpu but embeddings are on meta'): call()


def test_n_classes_path_equals_the_classes_present():
    "Labels below n_classes (absent classes leave empty columns) give the same values and gradients as re-coding them."
    torch.manual_seed(0)
    x, y = torch.randn(30, 5, dtype=torch.float64), torch.tensor([1, 4, 4, 7] * 7 + [9, 9])
    for distance in DIST_NAMES:
        for chunk in (None, 7):
            a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
            la = soft_silhouette_loss(a, y, 0.05, distance, chunk_size=chunk)
            lb = soft_silhouette_loss(b, y, 0.05, distance, chunk_size=chunk, n_classes=12, validate_args=False)
            la.backward(); lb.backward()
            torch.testing.assert_close(la, lb, atol=1e-12, rtol=0)
            torch.testing.assert_close(a.grad, b.grad, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(silhouette_samples(x, y, distance, n_classes=10), silhouette_samples(x, y, distance), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match='labels must be < n_classes = 8'): soft_silhouette_loss(x, y, n_classes=8)
    with pytest.raises(ValueError, match='at least 2 classes'): silhouette_score(x, torch.full((30,), 3), n_classes=5)
    assert silhouette_score(x, torch.full((30,), 3), n_classes=5, validate_args=False) == 0
    one = x.clone().requires_grad_()
    loss = soft_silhouette_loss(one, torch.full((30,), 3), n_classes=5, validate_args=False)
    loss.backward()
    assert loss.item() == 0 and torch.equal(one.grad, torch.zeros_like(one))
