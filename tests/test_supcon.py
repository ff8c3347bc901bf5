"SupCon: against a plain Python loop, against pytorch-metric-learning and the reference code, gradients, dtypes, bad input."
import math
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, assume, HealthCheck, strategies as st
from pytorch_metric_learning.losses import SupConLoss as PMLSupConLoss
from silhouette_nb.supcon import supcon_loss, supcon_anchor_losses, SupConLoss, gram_logsumexp, flatten_views
from test_silhouette import check_autocast, check_compiled_equals_eager, check_no_sync_cuda   # the same checks for every loss

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- oracles
def loop_supcon(features, labels, temperature=0.1, contrast_mode='all', variant='out'):
    "L_out / L_in written from the definition with Python loops, float64; the mean over anchors with a positive."
    f = features.detach().double()
    if f.ndim == 2: f = f[:, None]
    B, V, d = f.shape
    z = [f[b, v] / max(f[b, v].norm().item(), 1e-12) for v in range(V) for b in range(B)]  # view-major
    y = [int(labels[b]) for v in range(V) for b in range(B)]
    N = len(z)
    if len(set(y)) < 2: return 0.0
    anchors = range(N) if contrast_mode == 'all' else range(B)
    losses = []
    for i in anchors:
        s = {j: float(z[i] @ z[j]) / temperature for j in range(N) if j != i}
        P = [j for j in s if y[j] == y[i]]
        if not P: continue
        denom = math.log(sum(math.exp(v) for v in s.values()))
        if variant == 'out': losses.append(-sum(s[p] - denom for p in P) / len(P))
        else: losses.append(-math.log(sum(math.exp(s[p] - denom) for p in P) / len(P)))
    return sum(losses) / len(losses) if losses else 0.0


def reference_code(features, labels=None, mask=None, temperature=0.07, contrast_mode='all', base_temperature=0.07):
    """HobbitLong/SupContrast `losses.py` `SupConLoss(temperature, contrast_mode, base_temperature)(features, labels, mask)`,
    written here from its semantics (not copied): (B, V, d) features used as given (the caller normalises); positives from
    `mask[i, j]` (j a positive of i), from equal labels, or, with neither, the identity (SimCLR: a sample's other views);
    an anchor's own column left out; -(tau / base_temperature) times the mean log-probability of its positives (0 without
    any), averaged over every anchor."""
    B, V, d = features.shape
    if labels is not None and mask is not None: raise ValueError('Cannot define both `labels` and `mask`')
    if mask is None: mask = torch.eye(B) if labels is None else labels[:, None] == labels[None]
    contrast = torch.cat(features.unbind(1))                               # (B V, d), view-major
    anchors = contrast if contrast_mode == 'all' else features[:, 0]
    n = len(anchors)
    logits = anchors @ contrast.T / temperature
    not_self = torch.ones(n, B * V, dtype=torch.bool)
    not_self[torch.arange(n), torch.arange(n)] = False
    pos = mask.to(features.dtype).repeat(n // B, V) * not_self
    log_prob = logits - logits.masked_fill(~not_self, -math.inf).logsumexp(1, keepdim=True)
    npos = pos.sum(1)
    mean_log_prob_pos = (pos * log_prob).sum(1) / torch.where(npos < 1e-6, 1, npos)
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()


def reference_supcon(features, labels, temperature):
    "The reference code's loss in both contrast modes, with base_temperature = temperature; (B, V, d), normalised here."
    f = F.normalize(features, dim=2)
    return {mode: reference_code(f, labels, None, temperature, mode, temperature) for mode in ('all', 'one')}


# ---------------------------------------------------------------- strategies
@st.composite
def batches(draw, max_b=10, views=(1, 2, 3), dtype=torch.float64):
    B = draw(st.integers(1, max_b))
    V = draw(st.sampled_from(views))
    d = draw(st.integers(1, 6))
    pattern = draw(st.sampled_from(['random', 'singletons', 'same', 'distinct', 'pairs']))
    if pattern == 'random': labels = draw(st.lists(st.integers(0, 3), min_size=B, max_size=B))
    elif pattern == 'singletons': labels = [0] * (B - B // 2) + list(range(1, B // 2 + 1))  # one class + singletons
    elif pattern == 'same': labels = [draw(st.integers(0, 5))] * B
    elif pattern == 'distinct': labels = list(range(B))
    else: labels = [i // 2 for i in range(B)]
    labels = torch.tensor(labels)[torch.randperm(B, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))]
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(B, V, d, generator=g, dtype=torch.float64) * torch.rand(B, V, 1, generator=g, dtype=torch.float64).add(0.1) * 3
    x = x.to(dtype)
    return (x[:, 0] if V == 1 and draw(st.booleans()) else x), labels


temperatures = st.sampled_from([0.05, 0.1, 0.5, 1.0])


# ---------------------------------------------------------------- against the loop
@SETTINGS
@given(batches(), temperatures, st.sampled_from(['all', 'one']), st.sampled_from(['out', 'in']))
def test_matches_python_loop(batch, tau, mode, variant):
    x, y = batch
    ours = supcon_loss(x, y, tau, mode, variant)
    assert ours.dtype == torch.float64 and ours.ndim == 0
    assert abs(ours.item() - loop_supcon(x, y, tau, mode, variant)) < 1e-9


def test_in_below_out_and_equal_with_one_positive():
    torch.manual_seed(0)
    x, y = torch.randn(12, 5, dtype=torch.float64), torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4])
    lo, valid = supcon_anchor_losses(x, y, variant='out')
    li, _ = supcon_anchor_losses(x, y, variant='in')
    assert (li[:9] < lo[:9]).all()                       # Jensen, strict with >= 2 positives
    torch.testing.assert_close(li[9:], lo[9:])          # one positive (class 3) or none (class 4): equal
    assert valid.tolist() == [True] * 11 + [False]


# ---------------------------------------------------------------- against PML
@SETTINGS
@given(batches(max_b=16), temperatures, st.sampled_from([torch.float32, torch.float64]))
def test_matches_pml(batch, tau, dtype):
    x, y = batch
    x = x.to(dtype)
    V = x.shape[1] if x.ndim == 3 else 1
    flat = torch.cat(x.unbind(1)) if x.ndim == 3 else x
    pml = PMLSupConLoss(temperature=tau)(flat, y.repeat(V))
    losses, valid = supcon_anchor_losses(x, y, tau)
    # PML also drops a valid anchor whose loss rounds to exactly 0 (see the notebook); keep clear of that case
    assume(not valid.any() or losses[valid].min() > 1e-3)
    ours = supcon_loss(x, y, tau)
    tol = dict(atol=1e-6, rtol=0) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours, pml.to(ours.dtype), **tol)
    assert (pml.item() == 0) == (ours.item() == 0)


def test_pml_at_a_realistic_size():
    torch.manual_seed(0)
    x, y = torch.randn(512, 128, dtype=torch.float64), torch.randint(0, 10, (512,))
    for tau in (0.07, 0.1, 0.5):
        torch.testing.assert_close(supcon_loss(x, y, tau), PMLSupConLoss(tau)(x, y), atol=1e-6, rtol=0)
        torch.testing.assert_close(SupConLoss(tau)(x, y), PMLSupConLoss(tau)(x, y), atol=1e-6, rtol=0)


def test_pml_drops_underflowed_anchors_we_keep_them():
    x = torch.tensor([[1., 0], [1, 0], [-1, 0], [0, 1], [0, -1]])
    y = torch.tensor([0, 0, 1, 1, 1])
    losses, valid = supcon_anchor_losses(x, y, temperature=0.01)
    assert valid.all() and (losses[:2] == 0).all() and (losses[2:] > 0).all()
    torch.testing.assert_close(supcon_loss(x, y, 0.01), losses.mean())
    torch.testing.assert_close(PMLSupConLoss(0.01)(x, y), losses[2:].mean())


# ---------------------------------------------------------------- against the reference code (views, both modes)
@SETTINGS
@given(batches(max_b=10, views=(2, 3)), temperatures)
def test_matches_reference_code_with_views(batch, tau):
    x, y = batch
    assume(x.ndim == 3 and len(y.unique()) > 1)   # the reference code has no single-class rule
    ref = reference_supcon(x, y, tau)
    for mode in ('all', 'one'):
        torch.testing.assert_close(supcon_loss(x, y, tau, contrast_mode=mode), ref[mode], atol=1e-9, rtol=0)


# ---------------------------------------------------------------- a drop-in for the reference code's calls
@st.composite
def reference_calls(draw):
    "A (B, V, d) float64 batch of views, a temperature pair, and the positives as labels, as a mask, or neither."
    B, V, d = draw(st.integers(2, 8)), draw(st.sampled_from([2, 3])), draw(st.integers(1, 5))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(B, V, d, generator=g, dtype=torch.float64) * 3
    tau, base = draw(st.sampled_from([(0.07, 0.07), (0.1, 0.07), (0.5, 0.07), (0.1, 0.1), (0.2, 1.0)]))
    kind = draw(st.sampled_from(['labels', 'none', 'mask']))
    labels = mask = None
    if kind == 'labels': labels = torch.randint(0, draw(st.integers(2, 4)), (B,), generator=g)
    if kind == 'mask':   # asymmetric, with mask[i, i] = 1: every anchor has a positive (its other views)
        mask = (torch.rand(B, B, generator=g) < draw(st.sampled_from([0.2, 0.5]))).double().fill_diagonal_(1)
    return x, labels, mask, tau, base


@SETTINGS
@given(reference_calls(), st.sampled_from(['all', 'one']))
def test_reference_code_calls_give_their_values_and_gradients(call, mode):
    """criterion(features, labels), criterion(features), criterion(features, mask=mask): their loss and gradient in float64.
    They normalise in the model (SupConResNet's head), we in the loss: both gradients are taken through that normalisation."""
    x, labels, mask, tau, base = call
    if labels is not None: assume(len(labels.unique()) > 1)    # one class: they contrast nothing against something, we give 0
    if mask is not None: assume(not mask.bool().all())         # likewise: a mask of all ones leaves no negative pair
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    theirs = reference_code(F.normalize(xa, dim=2), labels, mask, tau, mode, base)
    ours = SupConLoss(temperature=tau, contrast_mode=mode, base_temperature=base)(xb, labels, mask=mask)
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-10)
    ga, = torch.autograd.grad(theirs, xa)
    gb, = torch.autograd.grad(ours, xb)
    torch.testing.assert_close(gb, ga, atol=1e-10, rtol=1e-8)
    for variant in ('out', 'in'):   # the functional form and the row blocks give the same
        f = supcon_loss(x, labels, tau, mode, variant, chunk_size=3, base_temperature=base, mask=mask)
        g = supcon_loss(x, labels, tau, mode, variant, base_temperature=base, mask=mask)
        torch.testing.assert_close(f, g, atol=1e-12, rtol=1e-12)


def test_their_defaults_and_the_base_temperature_factor():
    torch.manual_seed(0)
    x, y = F.normalize(torch.randn(16, 2, 8, dtype=torch.float64), dim=2), torch.randint(0, 4, (16,))
    their_default = reference_code(x, y)                          # SupConLoss() there: temperature = base_temperature = 0.07
    torch.testing.assert_close(SupConLoss(temperature=0.07, base_temperature=0.07)(x, y), their_default, atol=1e-12, rtol=0)
    torch.testing.assert_close(SupConLoss(temperature=0.07)(x, y), their_default, atol=1e-12, rtol=0)   # factor 1 either way
    their_main = reference_code(x, y, temperature=0.1)              # main_supcon.py --temp 0.1: base_temperature stays 0.07
    assert abs(their_main / SupConLoss()(x, y) - 0.1 / 0.07) < 1e-12          # ours without base_temperature: 1/1.4286 of theirs
    torch.testing.assert_close(SupConLoss(base_temperature=0.07)(x, y), their_main, atol=1e-12, rtol=0)
    assert SupConLoss().temperature == 0.1 and SupConLoss().base_temperature is None
    a, v = supcon_anchor_losses(x, y, base_temperature=0.07), supcon_anchor_losses(x, y)
    torch.testing.assert_close(a[0], v[0] * (0.1 / 0.07))


def test_anchors_without_a_positive_they_count_we_do_not():
    "A mask with zero rows (and zero diagonal): theirs is ours times the share of anchors that have a positive."
    torch.manual_seed(1)
    x = F.normalize(torch.randn(6, 2, 4, dtype=torch.float64), dim=2)
    mask = torch.zeros(6, 6)
    mask[0, 1] = mask[1, 0] = mask[2, 3] = mask[4, 4] = 1           # samples 3 and 5 have no positive in any view
    for mode in ('all', 'one'):
        losses, valid = supcon_anchor_losses(x, temperature=0.1, contrast_mode=mode, mask=mask)
        assert valid.float().mean() < 1
        ours = supcon_loss(x, temperature=0.1, contrast_mode=mode, mask=mask)
        torch.testing.assert_close(reference_code(x, mask=mask, temperature=0.1, contrast_mode=mode, base_temperature=0.1),
                                   ours * valid.double().mean(), atol=1e-12, rtol=0)
        torch.testing.assert_close(ours, losses[valid].mean())


def test_without_labels_each_sample_is_its_own_class():
    torch.manual_seed(2)
    x = torch.randn(7, 3, 5, dtype=torch.float64)
    for variant in ('out', 'in'):
        torch.testing.assert_close(supcon_loss(x, variant=variant), supcon_loss(x, torch.arange(7), variant=variant), atol=0, rtol=0)
        torch.testing.assert_close(supcon_loss(x, variant=variant), supcon_loss(x, mask=torch.eye(7, dtype=torch.bool), variant=variant))
    y = torch.tensor([0, 1, 1, 2, 0, 2, 3])
    torch.testing.assert_close(supcon_loss(x, mask=y[:, None] == y[None]), supcon_loss(x, y))
    assert supcon_loss(torch.randn(1, 2, 3)).item() == 0          # one sample: its views are all positives, nothing to contrast
    assert supcon_loss(torch.randn(5, 3)).item() == 0             # one view each: no positive at all
    assert supcon_loss(x, mask=torch.ones(7, 7)).item() == 0      # every pair positive: no negative


@pytest.mark.parametrize('call, err, match', [
    (lambda: supcon_loss(torch.randn(4, 2, 3), torch.arange(4), mask=torch.eye(4)), ValueError, 'labels or mask, not both'),
    (lambda: SupConLoss()(torch.randn(4, 2, 3), torch.arange(4), torch.eye(4)), ValueError, 'labels or mask, not both'),
    (lambda: supcon_loss(torch.randn(4, 2, 3), mask=torch.eye(3)), ValueError, r'\(B, B\) tensor over the B = 4'),
    (lambda: supcon_loss(torch.randn(4, 2, 3), mask=torch.eye(4) * 0.5), ValueError, 'only 0 and 1'),
    (lambda: supcon_loss(torch.randn(4, 2, 3), mask=torch.eye(4).tolist()), TypeError, 'mask must be a torch.Tensor'),
    (lambda: supcon_loss(torch.randn(4, 2, 3), mask=torch.eye(4), gather=True), ValueError, 'with gather=True give labels'),
    (lambda: supcon_loss(torch.randn(4, 2, 3, device='meta'), mask=torch.eye(4), validate_args=False), ValueError, 'mask is on cpu'),
    (lambda: SupConLoss(base_temperature=0), ValueError, 'base_temperature'),
    (lambda: supcon_loss(torch.randn(4, 3), base_temperature='0.07'), TypeError, 'base_temperature'),
])
def test_bad_mask_and_base_temperature(call, err, match):
    with pytest.raises(err, match=match): call()


def test_mask_value_check_is_switchable():
    x, m = torch.randn(4, 2, 3), torch.eye(4) * 0.5
    assert torch.isfinite(supcon_loss(x, mask=m, validate_args=False))      # unchecked: nonzero entries are positives
    torch.testing.assert_close(supcon_loss(x, mask=m, validate_args=False), supcon_loss(x, mask=torch.eye(4)))


def test_contrast_mode_one_is_first_view_anchors():
    torch.manual_seed(0)
    x, y = torch.randn(8, 2, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    all_losses, _ = supcon_anchor_losses(x, y, contrast_mode='all')
    one_losses, _ = supcon_anchor_losses(x, y, contrast_mode='one')
    torch.testing.assert_close(one_losses, all_losses[:8])
    torch.testing.assert_close(supcon_loss(x, y, contrast_mode='one'), all_losses[:8].mean())
    # with one view the two modes coincide
    torch.testing.assert_close(supcon_loss(x[:, 0], y, contrast_mode='one'), supcon_loss(x[:, 0], y))


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize('variant', ['out', 'in'])
@pytest.mark.parametrize('mode', ['all', 'one'])
@pytest.mark.parametrize('shape,labels', [((7, 3), [0, 0, 1, 1, 1, 2, 3]), ((5, 2, 3), [0, 1, 1, 2, 0]),
                                          ((4, 3, 2), [0, 1, 2, 3])])
def test_gradcheck(variant, mode, shape, labels):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(labels)
    assert torch.autograd.gradcheck(lambda x: supcon_loss(x, y, 0.3, mode, variant), (x,))
    assert torch.autograd.gradcheck(lambda x: supcon_anchor_losses(x, y, 0.3, mode, variant)[0], (x,))


def test_gradcheck_gram_logsumexp_masked():
    torch.manual_seed(0)
    a = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    z = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    keep = torch.rand(3, 6) < 0.6
    keep[:, 0] = True
    assert torch.autograd.gradcheck(lambda a, z: gram_logsumexp(a, z, 0.5, keep), (a, z))


def test_gradient_matches_autograd_of_the_plain_formula():
    torch.manual_seed(1)
    x = torch.randn(32, 8, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 4, (32,))
    g1, = torch.autograd.grad(supcon_loss(x, y), x)
    g2, = torch.autograd.grad(PMLSupConLoss(0.1)(x, y), x)
    torch.testing.assert_close(g1, g2, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize('variant', ['out', 'in'])
def test_second_derivatives(variant):
    "With create_graph=True the backward rebuilds the softmax with autograd: second derivatives are right."
    torch.manual_seed(0)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    assert torch.autograd.gradgradcheck(lambda x: supcon_loss(x, y, 0.5, variant=variant), (x,))


@pytest.mark.parametrize('x,y', [(torch.randn(5, 3), torch.zeros(5, dtype=torch.long)),   # no negative
                                 (torch.randn(5, 3), torch.arange(5)),                      # no positive
                                 (torch.randn(1, 3), torch.tensor([4])),                    # one sample
                                 (torch.randn(1, 1, 3), torch.tensor([4])),                 # one sample, one view
                                 (torch.randn(3, 2, 3), torch.tensor([1, 1, 1]))])          # views, one class
@pytest.mark.parametrize('variant', ['out', 'in'])
def test_degenerate_batches_are_zero_attached(x, y, variant):
    x = x.clone().requires_grad_()
    loss = supcon_loss(x, y, variant=variant)
    loss.backward()
    assert loss.item() == 0 and loss.requires_grad
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_large_logits_and_duplicates_are_finite():
    x = torch.tensor([[1., 0], [1, 0], [1, 0], [-1, 0], [0, 1e-30], [0, 0]], requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    for variant in ('out', 'in'):
        loss = supcon_loss(x, y, temperature=0.001, variant=variant)
        g, = torch.autograd.grad(loss, x)
        assert torch.isfinite(loss) and torch.isfinite(g).all()


# ---------------------------------------------------------------- half precision
@pytest.mark.parametrize('dtype,atol', [(torch.float16, 0.02), (torch.bfloat16, 0.1)])
@pytest.mark.parametrize('variant', ['out', 'in'])
def test_half_precision(dtype, atol, variant):
    torch.manual_seed(0)
    x32 = torch.randn(64, 2, 16)
    y = torch.randint(0, 5, (64,))
    xh = x32.to(dtype).requires_grad_()
    lh = supcon_loss(xh, y, variant=variant)
    lh.backward()
    assert lh.dtype == torch.float32 and torch.isfinite(lh)
    assert xh.grad.dtype == dtype and torch.isfinite(xh.grad).all()
    torch.testing.assert_close(lh, supcon_loss(xh.detach().float(), y, variant=variant), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lh, supcon_loss(x32, y, variant=variant), atol=atol, rtol=0)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize('call,match', [
    (lambda: supcon_loss(torch.randn(4), torch.arange(4)), r'\(B, d\) or \(B, V, d\)'),
    (lambda: supcon_loss(torch.randn(4, 2, 3, 1), torch.arange(4)), r'\(B, d\) or \(B, V, d\)'),
    (lambda: supcon_loss(torch.randn(4, 2, 3), torch.arange(8)), 'one label per sample'),
    (lambda: supcon_loss(torch.randn(4, 2, 3), torch.arange(4)[:, None]), 'one label per sample'),
    (lambda: supcon_loss(torch.randn(4, 0, 3), torch.arange(4)), 'zero views'),
    (lambda: supcon_loss(torch.randn(4, 3), torch.arange(3)), 'differ in length'),
    (lambda: supcon_loss(torch.randn(4, 3), torch.tensor([0., 1, 1, 0])), 'labels must be integers'),
    (lambda: supcon_loss(torch.randn(4, 3), torch.tensor([0, -1, 1, 0])), 'non-negative'),
    (lambda: supcon_loss(torch.full((4, 3), float('nan')), torch.arange(4)), 'NaN'),
    (lambda: supcon_loss(torch.randn(0, 3), torch.arange(0)), 'empty batch'),
    (lambda: supcon_loss(torch.arange(12).reshape(4, 3), torch.arange(4)), 'floating point'),
    (lambda: supcon_loss(torch.randn(4, 3), torch.arange(4), temperature=0), 'temperature'),
    (lambda: supcon_loss(torch.randn(4, 3), torch.arange(4), temperature=-1.), 'temperature'),
    (lambda: supcon_loss(torch.randn(4, 3), torch.arange(4), temperature=float('nan')), 'temperature'),
    (lambda: supcon_loss(torch.randn(4, 3), torch.arange(4), contrast_mode='both'), 'contrast_mode'),
    (lambda: supcon_loss(torch.randn(4, 3), torch.arange(4), variant='inside'), 'variant'),
    (lambda: SupConLoss(temperature=0.), 'temperature'),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_flatten_views_is_view_major():
    x = torch.randn(5, 3, 2)
    flat, y, V = flatten_views(x, torch.arange(5))
    assert V == 3 and torch.equal(flat, torch.cat(x.unbind(1))) and torch.equal(y, torch.arange(5).repeat(3))


# ---------------------------------------------------------------- one checking layer
@pytest.mark.parametrize('tau,err', [(math.inf, ValueError), (True, TypeError), ('0.1', TypeError), (None, TypeError),
                                     (0, ValueError), (-1, ValueError), (math.nan, ValueError), (1e-39, ValueError)])
def test_temperature_has_one_rule_everywhere(tau, err):
    "The same error as `check_temperature` gives, naming temperature, from the module and every function."
    from silhouette_nb.validation import check_temperature
    with pytest.raises(err) as expected: check_temperature(tau)
    x, y = torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])
    for call in (lambda: SupConLoss(temperature=tau), lambda: SupConLoss(tau), lambda: supcon_loss(x, y, tau),
                 lambda: supcon_anchor_losses(x, y, temperature=tau), lambda: supcon_loss(x, y, tau, gather=True)):
        with pytest.raises(err, match='temperature') as got: call()
        assert str(got.value) == str(expected.value)


def test_batch_checked_once_per_call(monkeypatch):
    import silhouette_nb.supcon as sc
    calls = []
    real = sc.check_batch
    monkeypatch.setattr(sc, 'check_batch', lambda *a, **k: calls.append(1) or real(*a, **k))
    for fn in (supcon_loss, supcon_anchor_losses, SupConLoss(variant='in', chunk_size=3)):
        calls.clear()
        fn(torch.randn(8, 2, 3), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
        assert len(calls) == 1


def test_validate_args_off_skips_the_value_checks():
    nan, y = torch.full((4, 3), math.nan), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match='NaN'): supcon_loss(nan, y)
    assert torch.isnan(supcon_loss(nan, y, validate_args=False))
    assert torch.isnan(SupConLoss(validate_args=False)(nan, y))
    assert supcon_loss(torch.randn(4, 3), torch.tensor([0, 0, -1, -1]), validate_args=False).isfinite()


# ---------------------------------------------------------------- mixed precision, torch.compile, host synchronisation
VARIANTS = {f'{variant}-{mode}-chunk{chunk}': SupConLoss(0.1, mode, variant, chunk_size=chunk, validate_args=False)
            for variant in ('out', 'in') for mode in ('all', 'one') for chunk in (None, 5)}


@pytest.mark.parametrize('backward_inside', [False, True])
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('name', list(VARIANTS))
def test_autocast(name, dtype, backward_inside):
    check_autocast(VARIANTS[name], dtype, backward_inside=backward_inside, shape=(32, 2, 16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('name', list(VARIANTS))
def test_autocast_cuda(name, dtype):
    check_autocast(VARIANTS[name], dtype, 'cuda', shape=(32, 2, 16))


@pytest.mark.parametrize('name', list(VARIANTS))
def test_no_host_sync_and_no_graph_break_without_validation(name):
    "SupCon needs no value on the host at all: labels re-coded by a sort, degenerate batches decided on the device."
    from silhouette_nb.validation import host_syncs
    x, y = torch.randn(12, 2, 4, requires_grad=True), torch.tensor([0, 0, 1, 1, 1, 3, 3, 3, 5, 5, 2, 7])
    with host_syncs() as s: VARIANTS[name](x, y).backward()
    assert s.ops == []
    with host_syncs() as s: SupConLoss(variant=VARIANTS[name].variant)(x, y)   # the check of the check: validation reads
    assert len(s.ops) >= 2
    torch._dynamo.reset()
    assert torch._dynamo.explain(VARIANTS[name])(x, y).graph_break_count == 0


@pytest.mark.slow
@pytest.mark.parametrize('name', ['out-all-chunkNone', 'in-all-chunk5'])
def test_compiled_equals_eager(name):
    check_compiled_equals_eager(VARIANTS[name], torch.randn(40, 2, 8), torch.randint(0, 5, (40,)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('name', list(VARIANTS))
def test_no_host_sync_cuda(name):
    check_no_sync_cuda(VARIANTS[name], torch.randn(12, 2, 4), torch.tensor([0, 0, 1, 1, 1, 3, 3, 3, 5, 5, 2, 7]))


# ---------------------------------------------------------------- edges
@pytest.mark.parametrize('scale', [1e-30, 1e30])
@pytest.mark.parametrize('variant', ['out', 'in'])
def test_scale_invariant_in_float32(scale, variant):
    torch.manual_seed(0)
    x, y = torch.randn(16, 2, 4), torch.randint(0, 3, (16,))
    xs = (x * scale).requires_grad_()
    loss = supcon_loss(xs, y, variant=variant)
    loss.backward()
    torch.testing.assert_close(loss, supcon_loss(x, y, variant=variant), atol=1e-5, rtol=1e-5)
    assert torch.isfinite(xs.grad).all() and (xs.grad != 0).any()


def test_labels_on_another_device_name_the_labels():
    x, y = torch.randn(4, 3, device='meta'), torch.tensor([0, 0, 1, 1])
    for call in (lambda: supcon_loss(x, y), lambda: SupConLoss()(x[:, None].expand(4, 2, 3), y)):
        with pytest.raises(ValueError, match='labels are on cpu but embeddings are on meta'): call()


# ---------------------------------------------------------------- without labels across processes
def simclr_worker(x):
    "This process's shard of views: SupConLoss(gather=True) without labels, its gradient, and the rows."
    from silhouette_nb.process_group import shard_rows
    rows = shard_rows(len(x))
    xs = x[rows].clone().requires_grad_()
    loss = supcon_loss(xs, gather=True, variant='in', chunk_size=3) + SupConLoss(gather=True, base_temperature=0.07)(xs)
    g, = torch.autograd.grad(loss, xs)
    return loss.item(), g, rows


def test_gather_without_labels_is_simclr_of_the_global_batch():
    "Each sample its own class in the *global* batch: codes from the gathered rows, not 0..B_r-1 on every process."
    from silhouette_nb.process_group import launch
    torch.manual_seed(0)
    x = torch.randn(10, 2, 4, dtype=torch.float64)
    xg = x.clone().requires_grad_()
    ref = supcon_loss(xg, variant='in') + SupConLoss(base_temperature=0.07)(xg)
    g_ref, = torch.autograd.grad(ref, xg)
    for v, g, rows in launch(simclr_worker, 2, x, threads=1, timeout=300):
        assert abs(v - ref.item()) < 1e-12
        assert (g - 2 * g_ref[rows]).abs().max() < 1e-12          # W times: DDP's mean over the 2 processes undoes it
