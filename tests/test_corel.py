"Randomised, oracle, gradient and training checks of `silhouette_nb.corel` (Gaussian- and Cosine-COREL)."
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from silhouette_nb.corel import (CosineCOREL, GaussianCOREL, cosine_corel_logits, cosine_corel_loss, gaussian_corel_logits, gaussian_corel_loss)
from silhouette_nb.validation import check_corel_batch


# ---------------------------------------------------------------- oracles: the formulas, one sample and class at a time
def loop_gaussian(h, W, y, gamma, lam):
    "Gaussian-COREL from its definition with Python floats (float64)."
    h, W, y = h.tolist(), W.tolist(), y.tolist()
    total = 0.
    for i in range(len(h)):
        S = [-gamma * sum((a - b) ** 2 for a, b in zip(h[i], W[k])) for k in range(len(W))]
        m = max(S)
        lse = m + math.log(sum(math.exp(s - m) for s in S))
        total += lam * (-S[y[i]]) + (1 - lam) * lse
    return total / len(h)


def _cos(a, b):
    na, nb = math.sqrt(sum(v * v for v in a)), math.sqrt(sum(v * v for v in b))
    if na == 0 or nb == 0: return 0.
    return sum(u * v for u, v in zip(a, b)) / (na * nb)


def loop_cosine(h, W, y, lam):
    "Cosine-COREL from its definition with Python floats (float64); no wrong class gives repulsion 0."
    h, W, y = h.tolist(), W.tolist(), y.tolist()
    total = 0.
    for i in range(len(h)):
        att = -_cos(h[i], W[y[i]])
        wrong = [_cos(h[i], W[k]) for k in range(len(W)) if k != y[i]]
        rep = max(0., max(wrong)) ** 2 if wrong else 0.
        total += lam * att + (1 - lam) * rep
    return total / len(h)


@st.composite
def batches(draw):
    "A float64 batch: N samples in d dims, K class vectors, labels in 0..K-1 (any pattern), lambda and gamma."
    n, k, d = draw(st.integers(1, 10)), draw(st.integers(1, 6)), draw(st.integers(1, 5))
    labels = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([0.1, 1., 5.]))
    h = scale * torch.randn(n, d, generator=g, dtype=torch.float64)
    if draw(st.booleans()) and n > 1: h[1] = h[0]                 # a duplicated embedding
    W = torch.randn(k, d, generator=g, dtype=torch.float64)
    lam = draw(st.floats(0, 1))
    gamma = draw(st.floats(0.05, 3.))
    return h, W, torch.tensor(labels), lam, gamma


# ---------------------------------------------------------------- the losses against their loops
@settings(max_examples=150, deadline=None)
@given(batches())
def test_gaussian_matches_loop(b):
    h, W, y, lam, gamma = b
    got = gaussian_corel_loss(h, W, y, gamma, lam)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(loop_gaussian(h, W, y, gamma, lam), rel=1e-9, abs=1e-9)


@settings(max_examples=150, deadline=None)
@given(batches())
def test_cosine_matches_loop(b):
    h, W, y, lam, _ = b
    got = cosine_corel_loss(h, W, y, lam)
    assert got.item() == pytest.approx(loop_cosine(h, W, y, lam), rel=1e-9, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(batches())
def test_gaussian_half_lambda_is_half_cross_entropy(b):
    h, W, y, _, gamma = b
    S = -gamma * ((h[:, None] - W[None]) ** 2).sum(-1)
    torch.testing.assert_close(gaussian_corel_loss(h, W, y, gamma, 0.5), 0.5 * F.cross_entropy(S, y), rtol=1e-10, atol=1e-10)


@settings(max_examples=50, deadline=None)
@given(batches())
def test_modules_match_functional_forms(b):
    h, W, y, lam, _ = b
    K, d = W.shape
    g, c = GaussianCOREL(K, d, attraction=lam).double(), CosineCOREL(K, d, attraction=lam).double()
    torch.testing.assert_close(g(h, y), gaussian_corel_loss(h, g.W, y, g.gamma, lam))
    torch.testing.assert_close(c(h, y), cosine_corel_loss(h, c.W, y, lam))
    for head in (g, c):
        S = head.logits(h)
        assert S.shape == (len(h), K)
        assert torch.equal(head.predict(h), S.argmax(1))
    torch.testing.assert_close(g.logits(h), -g.gamma * ((h[:, None] - g.W[None]) ** 2).sum(-1))
    torch.testing.assert_close(c.logits(h), F.cosine_similarity(h[:, None], c.W[None], dim=-1))


# ---------------------------------------------------------------- gradients in float64
@pytest.mark.parametrize('lam', [0.5, 0.2, 0.9])
def test_gaussian_gradcheck(lam):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    rho = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)    # gamma = softplus(rho), as in GaussianCOREL
    y = torch.tensor([0, 1, 2, 2, 0, 1, 1])
    assert torch.autograd.gradcheck(lambda h, W, rho: gaussian_corel_loss(h, W, y, F.softplus(rho), lam), (h, W, rho))
    assert torch.autograd.gradgradcheck(lambda h, W, rho: gaussian_corel_loss(h, W, y, F.softplus(rho), lam), (h, W, rho))


@pytest.mark.parametrize('lam,K', [(0.5, 4), (0.2, 4), (0.9, 4), (0.5, 1)])
def test_cosine_gradcheck(lam, K):
    g = torch.Generator().manual_seed(2)
    h = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(K, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2]) % K
    assert torch.autograd.gradcheck(lambda h, W: cosine_corel_loss(h, W, y, lam), (h, W))


def test_gaussian_module_gradients_reach_all_parameters():
    head = GaussianCOREL(3, 2, attraction=0.7)
    head(torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2])).backward()
    assert head.W.grad.abs().sum() > 0 and head.rho.grad.abs() > 0


# ---------------------------------------------------------------- bad input
HEADS = [GaussianCOREL, CosineCOREL]


@pytest.mark.parametrize('Head', HEADS)
@pytest.mark.parametrize('h,y,msg', [
    (torch.randn(4, 3), torch.tensor([0, 1, 3, 0]), 'n_classes = 3'),
    (torch.randn(4, 3), torch.tensor([0., 1, 2, 0]), 'labels must be integers'),
    (torch.randn(4, 3), torch.tensor([0, 1, 2]), 'differ in length'),
    (torch.randn(4, 5), torch.tensor([0, 1, 2, 0]), 'embedding dim 5'),
    (torch.randn(0, 3), torch.zeros(0, dtype=torch.long), 'empty batch'),
    (torch.randn(4, 3), torch.tensor([0, -1, 2, 0]), 'non-negative'),
    (torch.randn(4), torch.tensor([0, 1, 2, 0]), '2-D'),
    (torch.full((2, 3), float('nan')), torch.tensor([0, 1]), 'NaN'),
])
def test_bad_input_raises(Head, h, y, msg):
    head = Head(3, 3)
    with pytest.raises(ValueError, match=msg): head(h, y)
    W = torch.randn(3, 3)
    fn = (lambda: gaussian_corel_loss(h, W, y, 0.5)) if Head is GaussianCOREL else (lambda: cosine_corel_loss(h, W, y))
    with pytest.raises(ValueError, match=msg): fn()


@pytest.mark.parametrize('Head', HEADS)
def test_bad_prediction_input_and_options(Head):
    with pytest.raises(ValueError, match='embedding dim 4'): Head(3, 3).predict(torch.randn(2, 4))
    with pytest.raises(ValueError, match='embedding dim 4'): Head(3, 3).logits(torch.randn(2, 4))
    with pytest.raises(ValueError, match='attraction must be'): Head(3, 3, attraction=1.1)
    with pytest.raises(TypeError, match='attraction'): Head(3, 3, attraction='0.5')
    with pytest.raises(ValueError, match='n_classes must be'): Head(0, 3)
    with pytest.raises(ValueError, match='dim must be'): Head(3, 0)


def test_bad_gamma_and_class_vectors():
    h, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    for gamma in (0., -1., float('nan'), float('inf')):
        with pytest.raises(ValueError, match='gamma'): gaussian_corel_loss(h, torch.randn(2, 3), y, gamma)
        with pytest.raises(ValueError, match='gamma'): gaussian_corel_loss(h, torch.randn(2, 3), y, torch.tensor(gamma))
    with pytest.raises(ValueError, match='gamma must be a scalar'): gaussian_corel_loss(h, torch.randn(2, 3), y, torch.ones(2))
    with pytest.raises(ValueError, match='class vectors'): cosine_corel_loss(h, torch.randn(3), y)
    with pytest.raises(ValueError, match='class vectors'): check_corel_batch(h, torch.zeros(2, 3, dtype=torch.long), y)


def test_gamma_stays_positive():
    head = GaussianCOREL(2, 2)
    with torch.no_grad(): head.rho.fill_(-60.)
    assert head.gamma > 0
    assert torch.isfinite(head(torch.randn(3, 2), torch.tensor([0, 1, 1])))


# ---------------------------------------------------------------- half precision
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('Head', HEADS)
def test_half_precision_is_finite_and_computed_in_float32(Head, dtype):
    torch.manual_seed(0)
    head = Head(5, 16)
    h = (20 * torch.randn(64, 16)).to(dtype).requires_grad_()              # large squared distances (~1e4)
    y = torch.randint(0, 5, (64,))
    loss = head(h, y)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert h.grad.dtype == dtype and torch.isfinite(h.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
    torch.testing.assert_close(loss, head(h.detach().float(), y), rtol=1e-6, atol=1e-6)  # same as float32 on the rounded inputs
    assert head.logits(h.detach()).dtype == torch.float32


@pytest.mark.parametrize('Head', HEADS)
def test_half_precision_head(Head):
    head = Head(3, 4).half()
    loss = head(torch.randn(6, 4, dtype=torch.float16), torch.tensor([0, 1, 2, 0, 1, 2]))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.grad.dtype == torch.float16 and torch.isfinite(p.grad).all() for p in head.parameters())


# ---------------------------------------------------------------- degenerate batches
def _cases():
    g = torch.Generator().manual_seed(3)
    return {'one sample': (torch.randn(1, 3, generator=g), torch.tensor([2])),
            'one class': (torch.randn(5, 3, generator=g), torch.tensor([1] * 5)),
            'duplicates': (torch.ones(4, 3), torch.tensor([0, 1, 0, 1])),
            'all zero': (torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])),
            'huge': (1e15 * torch.randn(4, 3, generator=g), torch.tensor([0, 1, 2, 0]))}


@pytest.mark.parametrize('case', list(_cases()))
@pytest.mark.parametrize('Head,K', [(GaussianCOREL, 3), (CosineCOREL, 3), (CosineCOREL, 1), (GaussianCOREL, 1)])
def test_degenerate_batches_give_finite_values_and_gradients(Head, K, case):
    h, y = _cases()[case]
    y = y % K
    head = Head(K, 3)
    h = h.clone().requires_grad_()
    loss = head(h, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(h.grad).all() and all(torch.isfinite(p.grad).all() for p in head.parameters())


def test_embedding_on_its_class_vector():
    head = GaussianCOREL(3, 3)
    h = head.W.detach()[[0, 1]].clone().requires_grad_()
    loss = head(h, torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(h.grad).all() and torch.isfinite(head.W.grad).all()


def test_zero_embedding_has_zero_cosine_and_zero_gradient():
    W = torch.randn(4, 3, requires_grad=True)
    h = torch.zeros(2, 3, requires_grad=True)
    loss = cosine_corel_loss(h, W, torch.tensor([0, 3]))
    loss.backward()
    assert loss.item() == 0 and torch.equal(h.grad, torch.zeros(2, 3)) and torch.equal(W.grad, torch.zeros(4, 3))
    assert torch.equal(cosine_corel_logits(h, W), torch.zeros(2, 4))


def test_cosine_one_class_has_no_repulsion():
    h, W = torch.randn(6, 3, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64)
    y = torch.zeros(6, dtype=torch.long)
    lam = 0.3
    torch.testing.assert_close(cosine_corel_loss(h, W, y, lam), -lam * F.cosine_similarity(h, W).mean())


def test_cosine_repulsion_only_counts_the_most_similar_wrong_class():
    W = torch.tensor([[1., 0.], [0.6, 0.8], [0.8, 0.6], [-1., 0.]], dtype=torch.float64)
    h = torch.tensor([[1., 0.]], dtype=torch.float64)
    # att = -1; wrong-class cosines 0.6, 0.8, -1 -> rep = 0.8^2
    torch.testing.assert_close(cosine_corel_loss(h, W, torch.tensor([0]), attraction=0.), torch.tensor(0.64, dtype=torch.float64))
    torch.testing.assert_close(cosine_corel_loss(h, W, torch.tensor([0]), attraction=1.), torch.tensor(-1., dtype=torch.float64))
    # all wrong classes on the far side: no repulsion
    torch.testing.assert_close(cosine_corel_loss(-h, W[:3], torch.tensor([0]), attraction=0.), torch.tensor(0., dtype=torch.float64))


# ---------------------------------------------------------------- training a head alone on fixed separable embeddings
def _separable(n_per=60, K=5, d=8, seed=123):
    g = torch.Generator().manual_seed(seed)
    centres = 5 * F.normalize(torch.randn(K, d, generator=g), dim=1)      # on a sphere: separable by angle too
    y = torch.arange(K).repeat_interleave(n_per)
    return centres[y] + 0.4 * torch.randn(K * n_per, d, generator=g), y


def _nearest_centroid_accuracy(x, y):
    mu = torch.stack([x[y == c].mean(0) for c in range(int(y.max()) + 1)])
    return (torch.cdist(x, mu).argmin(1) == y).float().mean().item()


@pytest.mark.parametrize('Head,lam', [(GaussianCOREL, 0.5), (GaussianCOREL, 0.8), (CosineCOREL, 0.5), (CosineCOREL, 0.8)])
def test_head_trained_alone_reaches_nearest_centroid_accuracy(Head, lam):
    x, y = _separable()
    nc = _nearest_centroid_accuracy(x, y)
    assert nc == 1.0                                                     # the embeddings are separable
    torch.manual_seed(0)
    head = Head(5, 8, attraction=lam)
    acc0 = (head.predict(x) == y).float().mean().item()
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad(); loss = head(x, y); loss.backward(); opt.step()
    acc = (head.predict(x) == y).float().mean().item()
    assert acc0 < 0.9                                                    # training did the work, not the initialisation
    assert acc >= nc


# ---------------------------------------------------------------- the renamed option, autocast, validate_args
def test_lam_is_the_deprecated_name_of_attraction():
    g = torch.Generator().manual_seed(4)
    h, W, y = torch.randn(6, 3, generator=g), torch.randn(3, 3, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    for fn in (lambda **kw: gaussian_corel_loss(h, W, y, 0.5, **kw), lambda **kw: cosine_corel_loss(h, W, y, **kw)):
        with pytest.warns(DeprecationWarning, match='`lam` is deprecated.*use `attraction`'): old = fn(lam=0.3)
        assert torch.equal(old, fn(attraction=0.3))
    for Head in HEADS:
        with pytest.warns(DeprecationWarning, match='use `attraction`'): head = Head(3, 3, lam=0.3)
        assert head.attraction == 0.3
        with pytest.raises(TypeError, match="unexpected keyword argument 'lamda'"): Head(3, 3, lamda=0.3)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('Head', HEADS)
def test_autocast_forward_and_backward_in_float32(Head, dtype):
    "Under CPU autocast the head computes in float32 (autocast off inside): float32 loss and logits, the float32 values."
    torch.manual_seed(0)
    head = Head(5, 16)
    x, y = 3 * torch.randn(64, 16), torch.randint(0, 5, (64,))
    h = x.clone().requires_grad_()
    with torch.autocast('cpu', dtype=dtype):
        loss, logits = head(h, y), head.logits(h)
    loss.backward()
    assert loss.dtype == logits.dtype == torch.float32
    ref = head(x, y)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits, head.logits(x), rtol=1e-6, atol=1e-6)
    assert torch.isfinite(h.grad).all() and h.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())


@pytest.mark.parametrize('Head', HEADS)
def test_validate_args_off_skips_only_the_value_checks(Head):
    head = Head(3, 3, validate_args=False)
    assert torch.isnan(head(torch.full((2, 3), float('nan')), torch.tensor([0, 1])))   # no finiteness check...
    with pytest.raises(ValueError, match='embedding dim 4'): head(torch.randn(2, 4), torch.tensor([0, 1]))  # ...shapes still
    with pytest.raises(ValueError, match='labels must be integers'): head(torch.randn(2, 3), torch.tensor([0., 1.]))
    with pytest.raises(ValueError, match='NaN'): Head(3, 3)(torch.full((2, 3), float('nan')), torch.tensor([0, 1]))
