"Distances and class aggregates: against the definitions (explicit differences, Python loops), gradients, the fused and O(BKd) paths, bad input."
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, assume, HealthCheck, strategies as st

from silhouette_nb.distances import (DISTANCES, class_counts, class_means, class_sums, cosine, dense_codes, encode_labels, euclidean, euclidean_class_sums, mean_distance_to_classes, mean_sqeuclidean_to_classes, one_hot, pairwise_distances, sq_euclidean, unit_rows)
from silhouette_nb.validation import DISTANCE_NAMES
from silhouette_nb.validation import check_batch, compute_dtype

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- oracles: the definitions
def direct(a, b, distance='euclidean'):
    "Distances from the explicit (B, M, d) differences / the cosine formula; no Gram matrix, no clamping."
    if distance == 'cosine':
        return 1 - F.cosine_similarity(a[:, None], b[None], dim=-1, eps=1e-300)
    d2 = ((a[:, None] - b[None]) ** 2).sum(-1)
    return d2 if distance == 'sqeuclidean' else d2.sqrt()


def direct_self(x, distance='euclidean'):
    "`direct(x, x)` with an exact zero diagonal, differentiable off the diagonal (no sqrt(0) on it)."
    eye = torch.eye(len(x), dtype=torch.bool)
    if distance == 'cosine': return direct(x, x, 'cosine').masked_fill(eye, 0)
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    if distance == 'sqeuclidean': return d2.masked_fill(eye, 0)
    return d2.masked_fill(eye, 1).sqrt().masked_fill(eye, 0)


def loop_mean_distance(D, labels, exclude_self=True):
    "m_i(c) with Python loops over samples and classes present, classes in increasing label order."
    D, labels = D.tolist(), labels.tolist()
    classes = sorted(set(labels))
    out = []
    for i in range(len(labels)):
        row = []
        for c in classes:
            js = [j for j in range(len(labels)) if labels[j] == c and not (exclude_self and j == i)]
            row.append(sum(D[i][j] for j in js) / len(js) if js else 0.)
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


# ---------------------------------------------------------------- strategies
@st.composite
def points(draw, max_b=12, max_d=6, min_b=1):
    """A float64 batch at a random scale with no duplicate or near-duplicate rows: the Gram route's error in a distance
    is about eps * |x|^2 / d, so pairs closer than 1e-3 * max|x| are left to the duplicate tests."""
    B, d = draw(st.integers(min_b, max_b)), draw(st.integers(1, max_d))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = 10 ** draw(st.floats(-2, 2))
    x = torch.randn(B, d, generator=g, dtype=torch.float64) * scale
    assume(well_separated(x))
    return x


def well_separated(x, rel=1e-3):
    "No two rows closer than `rel` times the largest coordinate."
    if len(x) < 2: return True
    D = ((x[:, None] - x[None]) ** 2).sum(-1).sqrt().masked_fill(torch.eye(len(x), dtype=torch.bool), math.inf)
    return bool(D.min() > rel * x.abs().max())


@st.composite
def grid_points(draw, max_b=12, max_d=4):
    "Small integers in float64: the Gram route is exact, so duplicates give exactly zero distance."
    B, d = draw(st.integers(1, max_b)), draw(st.integers(1, max_d))
    vals = draw(st.lists(st.integers(-3, 3), min_size=B * d, max_size=B * d))
    return torch.tensor(vals, dtype=torch.float64).reshape(B, d)


@st.composite
def labels_for(draw, B, max_label=50):
    "Labels for B samples: non-contiguous values, singletons, one class, all distinct."
    pattern = draw(st.sampled_from(['random', 'singletons', 'same', 'distinct']))
    values = draw(st.lists(st.integers(0, max_label), min_size=B, max_size=B, unique=True)) if max_label + 1 >= B \
        else list(range(B))
    if pattern == 'random': idx = draw(st.lists(st.integers(0, min(3, B - 1)), min_size=B, max_size=B))
    elif pattern == 'singletons': idx = [0] * (B - B // 2) + list(range(1, B // 2 + 1))
    elif pattern == 'same': idx = [0] * B
    else: idx = list(range(B))
    return torch.tensor([values[i] for i in idx])


distances = st.sampled_from(sorted(DISTANCES))


# ---------------------------------------------------------------- pairwise distances against the definition
@SETTINGS
@given(points(), st.booleans(), st.integers(1, 8), distances, st.integers(0, 99))
def test_pairwise_matches_definition(x, cross, M, distance, seed):
    z = torch.randn(M, x.shape[1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * x.abs().max() \
        if cross else None
    D = pairwise_distances(x, z, distance)
    ref = direct(x, x if z is None else z, distance)
    if z is None: ref = ref.masked_fill(torch.eye(len(x), dtype=torch.bool), 0)
    unit = {'euclidean': x.abs().max(), 'sqeuclidean': x.abs().max() ** 2, 'cosine': 1.}[distance]
    assert D.shape == ref.shape and D.dtype == torch.float64
    torch.testing.assert_close(D / unit, ref / unit, atol=1e-9, rtol=0)
    assert (D >= 0).all()
    if distance == 'cosine': assert (D <= 2).all()
    if z is None:
        assert (D.diagonal() == 0).all()                 # exact zeros, not rounding noise
        torch.testing.assert_close(D, D.T, atol=1e-12 * float(unit), rtol=0)


@SETTINGS
@given(grid_points(), distances)
def test_duplicates_give_exact_zeros_and_finite_gradients(x, distance):
    x = x.clone().requires_grad_()
    D = pairwise_distances(x, distance=distance)
    w = torch.randn(D.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g, = torch.autograd.grad((D * w).sum(), x)
    assert torch.isfinite(g).all()
    same = (x[:, None] == x[None]).all(-1)
    if distance != 'cosine': assert (D[same] == 0).all()
    else:   # the zero vector is at distance 1 from everything but itself, another zero vector included
        zero = (x == 0).all(1)
        assert (D[same & ~zero[:, None]] < 1e-12).all()
        assert (D[zero[:, None] & zero[None] & ~torch.eye(len(x), dtype=torch.bool)] == 1).all()


def test_euclidean_subgradient_is_zero_at_zero_distance():
    "The gradient of the pair at distance zero vanishes; the other pairs' gradients are those of the definition."
    x = torch.tensor([[0., 0.], [3., 4.], [3., 4.]], dtype=torch.float64, requires_grad=True)
    pairwise_distances(x).sum().backward()
    # x0 is pulled by 4 unit vectors (twice to each copy), each copy pushed by 2 unit vectors away from x0
    torch.testing.assert_close(x.grad, torch.tensor([[-2.4, -3.2], [1.2, 1.6], [1.2, 1.6]], dtype=torch.float64))
    # autograd through sqrt gives NaN here: the reason for the hand-written backward
    x2 = x.detach().clone().requires_grad_()
    ((x2[:, None] - x2[None]) ** 2).sum(-1).sqrt().sum().backward()
    assert torch.isnan(x2.grad).all()


def test_zero_vector_cosine_is_finite():
    x = torch.tensor([[0., 0.], [1., 0.], [0., 2.]], dtype=torch.float64, requires_grad=True)
    D = cosine(x)
    torch.testing.assert_close(D, torch.tensor([[0., 1, 1], [1, 0, 1], [1, 1, 0]], dtype=torch.float64))
    D.sum().backward()
    assert torch.isfinite(x.grad).all()


@SETTINGS
@given(points(max_b=10), distances)
def test_hand_written_backward_equals_autograd_of_definition(x, distance):
    x = x / x.abs().max()
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    w = torch.randn(len(x), len(x), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (pairwise_distances(a, distance=distance) * w).sum().backward()
    (direct_self(b, distance) * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-7, rtol=1e-7)


# ---------------------------------------------------------------- gradcheck (float64, no duplicate rows)
@pytest.mark.parametrize('distance', sorted(DISTANCES))
@pytest.mark.parametrize('cross', [False, True])
def test_gradcheck_distances(distance, cross):
    torch.manual_seed(0)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    if cross: assert torch.autograd.gradcheck(lambda x, z: pairwise_distances(x, z, distance), (x, z))
    else: assert torch.autograd.gradcheck(lambda x: pairwise_distances(x, distance=distance), (x,))


@pytest.mark.parametrize('fn', [euclidean, sq_euclidean, cosine])
def test_gradcheck_distance_functions_one_sided(fn):
    "Gradient to x only or to z only (the backward's needs_input_grad branches)."
    torch.manual_seed(1)
    x = torch.randn(5, 4, dtype=torch.float64)
    z = torch.randn(3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: fn(x, z), (x.requires_grad_(),))
    assert torch.autograd.gradcheck(lambda z: fn(x.detach(), z), (z.requires_grad_(),))


@pytest.mark.parametrize('labels', [[0, 0, 1, 1, 1, 2], [0, 1, 2, 3, 4, 5], [2, 2, 2, 2, 2, 2], [1, 0, 0, 2, 2, 0]])
def test_gradcheck_euclidean_class_sums(labels):
    torch.manual_seed(2)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    codes, classes = encode_labels(torch.tensor(labels))
    assert torch.autograd.gradcheck(lambda x: euclidean_class_sums(x, codes, len(classes)), (x,))


@pytest.mark.parametrize('exclude_self', [True, False])
@pytest.mark.parametrize('labels', [[0, 0, 1, 1, 1, 2], [0, 1, 2, 3, 4, 5], [2, 2, 2, 2, 2, 2]])
def test_gradcheck_mean_sqeuclidean_to_classes(labels, exclude_self):
    torch.manual_seed(3)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    codes, classes = encode_labels(torch.tensor(labels))
    Y = one_hot(codes, len(classes), torch.float64)
    assert torch.autograd.gradcheck(lambda x: mean_sqeuclidean_to_classes(x, Y, exclude_self), (x,))


@pytest.mark.parametrize('distance', sorted(DISTANCES))
def test_gradcheck_mean_distance_to_classes(distance):
    torch.manual_seed(4)
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    Y = one_hot(torch.tensor([0, 0, 1, 1, 1, 2, 0]), 3, torch.float64)
    assert torch.autograd.gradcheck(lambda x: mean_distance_to_classes(pairwise_distances(x, distance=distance), Y), (x,))


# ---------------------------------------------------------------- class aggregates against loops
@SETTINGS
@given(st.data())
def test_encode_labels_and_one_hot(data):
    B = data.draw(st.integers(1, 12))
    y = data.draw(labels_for(B))
    codes, classes = encode_labels(y)
    present = sorted(set(y.tolist()))
    assert classes.tolist() == present
    assert torch.equal(classes[codes], y)
    assert codes.min() == 0 and codes.max() == len(present) - 1
    Y = one_hot(codes)
    assert Y.shape == (B, len(present)) and Y.dtype == torch.float32
    assert torch.equal(Y.sum(1), torch.ones(B)) and torch.equal(Y.argmax(1), codes)
    assert class_counts(Y).tolist() == [y.tolist().count(c) for c in present]
    assert one_hot(codes, len(present) + 2, torch.float64).shape == (B, len(present) + 2)


@SETTINGS
@given(points(), st.data())
def test_class_sums_and_means_match_loops(x, data):
    y = data.draw(labels_for(len(x)))
    codes, classes = encode_labels(y)
    Y = one_hot(codes, len(classes), torch.float64)
    members = [[i for i in range(len(x)) if codes[i] == c] for c in range(len(classes))]
    sums = torch.stack([x[m].sum(0) for m in members])
    torch.testing.assert_close(class_sums(x, Y), sums, atol=1e-12 * float(x.abs().max()), rtol=1e-12)
    torch.testing.assert_close(class_means(x, Y), torch.stack([x[m].mean(0) for m in members]))
    v = x[:, :1].reshape(-1)                                             # (B,) values
    torch.testing.assert_close(class_sums(v, Y), sums[:, 0])
    v3 = torch.stack([x, 2 * x], 1)                                      # (B, 2, d) values
    torch.testing.assert_close(class_sums(v3, Y), torch.stack([sums, 2 * sums], 1))
    assert class_sums(x, Y.float()).dtype == torch.float64               # follows the values' dtype


@SETTINGS
@given(points(), st.data(), distances, st.booleans())
def test_mean_distance_to_classes_matches_loop(x, data, distance, exclude_self):
    y = data.draw(labels_for(len(x)))
    codes, classes = encode_labels(y)
    Y = one_hot(codes, len(classes))
    D = pairwise_distances(x, distance=distance)
    M = mean_distance_to_classes(D, Y, exclude_self)
    assert M.dtype == torch.float64 and M.shape == (len(x), len(classes))
    torch.testing.assert_close(M, loop_mean_distance(D, y, exclude_self), atol=1e-12 * float(D.abs().max() + 1), rtol=1e-12)
    if exclude_self:   # a singleton's own-class mean: nothing to average, 0
        n = class_counts(Y)[codes]
        assert (M[n == 1, codes[n == 1]] == 0).all()


# ---------------------------------------------------------------- the fused and O(BKd) paths equal the naive ones
@SETTINGS
@given(points(max_b=14), st.data())
def test_euclidean_class_sums_equals_naive(x, data):
    "Values and gradients equal the one-hot product with the full matrix from explicit differences."
    x = x / x.abs().max()
    y = data.draw(labels_for(len(x)))
    codes, classes = encode_labels(y)
    K = len(classes)
    Y = one_hot(codes, K, torch.float64)
    a, b, c = (x.clone().requires_grad_() for _ in range(3))
    S_fused, S_naive, S_gram = euclidean_class_sums(a, codes, K), direct_self(b) @ Y, euclidean(c) @ Y
    assert S_fused.shape == (len(x), K) and S_fused.dtype == torch.float64
    torch.testing.assert_close(S_fused, S_naive, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(S_fused, S_gram, atol=1e-12, rtol=1e-12)
    w = torch.randn(len(x), K, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for s, t in ((S_fused, a), (S_naive, b), (S_gram, c)): (s * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(a.grad, c.grad, atol=1e-10, rtol=1e-10)


@SETTINGS
@given(grid_points(max_b=12), st.data())
def test_euclidean_class_sums_with_duplicates(x, data):
    "Exact duplicates: same values and the same (subgradient 0) gradient as the unfused `euclidean` route, finite."
    y = data.draw(labels_for(len(x)))
    codes, classes = encode_labels(y)
    K = len(classes)
    a, c = x.clone().requires_grad_(), x.clone().requires_grad_()
    S_fused, S_gram = euclidean_class_sums(a, codes, K), euclidean(c) @ one_hot(codes, K, torch.float64)
    torch.testing.assert_close(S_fused, S_gram, atol=1e-12, rtol=1e-12)
    w = torch.randn(len(x), K, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    (S_fused * w).sum().backward(); (S_gram * w).sum().backward()
    assert torch.isfinite(a.grad).all()
    torch.testing.assert_close(a.grad, c.grad, atol=1e-10, rtol=1e-10)


@SETTINGS
@given(points(max_b=14), st.data(), st.booleans(), st.floats(-3, 3))
def test_mean_sqeuclidean_to_classes_equals_naive(x, data, exclude_self, offset):
    "The O(BKd) identity equals the mean of the full squared-distance matrix, values and gradients (also off-centre)."
    x = x / x.abs().max() + offset
    y = data.draw(labels_for(len(x)))
    codes, classes = encode_labels(y)
    Y = one_hot(codes, len(classes), torch.float64)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    M_fast = mean_sqeuclidean_to_classes(a, Y, exclude_self)
    M_naive = mean_distance_to_classes(direct_self(b, 'sqeuclidean'), Y, exclude_self)
    assert M_fast.shape == M_naive.shape and M_fast.dtype == torch.float64
    torch.testing.assert_close(M_fast, M_naive, atol=1e-10, rtol=1e-10)
    w = torch.randn(M_fast.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    (M_fast * w).sum().backward(); (M_naive * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-9, rtol=1e-9)


def test_fused_paths_at_a_realistic_size_float32():
    torch.manual_seed(0)
    x = F.normalize(torch.randn(512, 64), dim=1)
    codes = torch.randint(0, 10, (512,))
    Y = one_hot(codes, 10)
    x64 = x.double()
    ref_sums = direct_self(x64) @ Y.double()
    torch.testing.assert_close(euclidean_class_sums(x, codes, 10).double(), ref_sums, atol=2e-3, rtol=1e-5)
    ref_sq = mean_distance_to_classes(direct_self(x64, 'sqeuclidean'), Y.double())
    torch.testing.assert_close(mean_sqeuclidean_to_classes(x, Y).double(), ref_sq, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- checking a batch
def test_compute_dtype():
    assert compute_dtype(torch.float16) == compute_dtype(torch.bfloat16) == torch.float32
    for dt in (torch.float32, torch.float64): assert compute_dtype(dt) == dt


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize('ldtype', [torch.int8, torch.uint8, torch.int32, torch.int64])
def test_check_batch_dtypes(dtype, ldtype):
    x0 = torch.randn(5, 3).to(dtype)
    x, y = check_batch(x0, torch.tensor([0, 1, 1, 2, 0], dtype=ldtype))
    assert x.dtype == compute_dtype(dtype) and y.dtype == torch.int64
    assert torch.equal(x, x0.to(x.dtype)) and y.tolist() == [0, 1, 1, 2, 0]


@pytest.mark.parametrize('x,y,match', [
    (torch.randn(4), torch.arange(4), r'2-D \(B, d\)'),
    (torch.randn(4, 3, 2), torch.arange(4), r'2-D \(B, d\)'),
    (torch.randn(4, 3), torch.arange(4)[:, None], r'1-D \(B,\)'),
    (torch.randn(4, 3), torch.tensor(1), r'1-D \(B,\)'),
    (torch.randn(4, 3), torch.arange(3), 'differ in length'),
    (torch.randn(3, 3), torch.arange(4), 'differ in length'),
    (torch.randn(4, 3), torch.tensor([0., 1, 1, 0]), 'labels must be integers'),
    (torch.randn(4, 3), torch.tensor([True, False, True, True]), 'labels must be integers'),
    (torch.randn(4, 3), torch.tensor([0, -1, 1, 0]), 'non-negative'),
    (torch.randn(0, 3), torch.zeros(0, dtype=torch.long), 'empty batch'),
    (torch.randn(4, 0), torch.arange(4), 'zero dimensions'),
    (torch.arange(12).reshape(4, 3), torch.arange(4), 'floating point'),
    (torch.tensor([[0., 1], [float('nan'), 0]]), torch.arange(2), 'NaN'),
    (torch.tensor([[0., 1], [float('inf'), 0]]), torch.arange(2), 'infinite'),
])
def test_check_batch_bad_input(x, y, match):
    with pytest.raises(ValueError, match=match):
        check_batch(x, y)


def test_check_batch_not_tensors():
    with pytest.raises(TypeError, match='embeddings must be a torch.Tensor'): check_batch([[0., 1.]], torch.arange(1))
    with pytest.raises(TypeError, match='labels must be a torch.Tensor'): check_batch(torch.randn(2, 2), [0, 1])


def test_unknown_distance():
    with pytest.raises(ValueError, match='unknown distance'):
        pairwise_distances(torch.randn(3, 2), distance='manhattan')


# ---------------------------------------------------------------- the names, the codes, unit rows at any scale
def test_distance_names_are_the_distances():
    assert tuple(DISTANCES) == DISTANCE_NAMES


@SETTINGS
@given(st.data())
def test_dense_codes_without_unique(data):
    "Codes in order of label value, the same as torch.unique's inverse, from a sort alone (no value read on the host)."
    from silhouette_nb.validation import host_syncs
    y = data.draw(labels_for(data.draw(st.integers(1, 12))))
    with host_syncs() as s: codes = dense_codes(y)
    assert s.ops == []
    assert torch.equal(codes, torch.unique(y, return_inverse=True)[1])
    assert torch.equal(one_hot(codes, len(y) + 3)[:, :codes.max() + 1], one_hot(codes))


def test_one_hot_out_of_range_is_a_zero_row_and_empty_means_are_zero():
    assert torch.equal(one_hot(torch.tensor([0, 5, 1]), 3), torch.tensor([[1., 0, 0], [0, 0, 0], [0, 1, 0]]))
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    Y = one_hot(torch.tensor([0, 0, 2, 2]), 4, torch.float64)                 # classes 1 and 3 absent
    mu = class_means(x, Y)
    assert (mu[[1, 3]] == 0).all() and torch.isfinite(mean_sqeuclidean_to_classes(x, Y)).all()
    (mean_sqeuclidean_to_classes(x, Y) * torch.arange(16.).reshape(4, 4)).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize('dtype,scales', [(torch.float32, [1e-30, 1e-20, 1e-3, 1e20, 1e30, 3e38]),
                                          (torch.float16, [1e-4, 1, 6e4]), (torch.float64, [1e-300, 1e300])])
def test_unit_rows_at_any_scale(dtype, scales):
    "Any finite non-zero row normalises to the direction of x (the plain norm overflows / underflows at these scales)."
    torch.manual_seed(0)
    d = torch.randn(5, 7, dtype=torch.float64)
    ref = d / d.norm(dim=1, keepdim=True)
    for s in scales:
        x = (d / d.abs().amax(1, keepdim=True) * s).to(dtype)          # largest entry of each row = s, representable
        u = unit_rows(x)
        torch.testing.assert_close(u.double(), ref, atol=4 * torch.finfo(dtype).eps, rtol=0)
        assert torch.isfinite(u).all() and (u.norm(dim=1) - 1).abs().max() < 8 * torch.finfo(dtype).eps
    z = torch.zeros(2, 7, dtype=dtype, requires_grad=True)
    unit_rows(z).sum().backward()
    assert torch.equal(unit_rows(z.detach()), torch.zeros(2, 7, dtype=dtype)) and torch.equal(z.grad, torch.zeros_like(z))


def test_gradcheck_unit_rows():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(unit_rows, (x,))
    assert torch.autograd.gradcheck(lambda x: unit_rows(x * 1e200), (x,))
