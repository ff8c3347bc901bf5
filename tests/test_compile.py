"""torch.compile with the default settings: a training step of our losses is one graph.

Under compilation the value checks (NaN, label ranges: each a read on the host) are skipped by default, as if
`validate_args=False` (nbs/00_validation.ipynb, "Under torch.compile"); outside it the default stays on. The one read
left is the class count of the silhouette without `n_classes`, documented there and pinned down below.
Graph breaks are Dynamo's and do not depend on the backend: `backend='eager'` keeps the tests fast; one slow test
compiles with inductor.
"""
import math
import pytest
import torch
from torch._dynamo.utils import counters
from silhouette_nb.silhouette import SoftSilhouetteLoss
from silhouette_nb.supcon import SupConLoss
from silhouette_nb.corel import GaussianCOREL, CosineCOREL

B, D_IN, D, K = 16, 8, 4, 4


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D_IN, generator=g), torch.randint(0, K, (B,), generator=g)


def _views(x):
    return torch.stack([x, x.flip(1)], 1)                         # (B, 2, D_IN): two "augmentations"


CASES = {   # loss, and the loss's arguments after the encoded batch, from (x, y)
    'soft silhouette, n_classes': (lambda: SoftSilhouetteLoss(n_classes=K), lambda y: (y,)),
    'soft silhouette, cosine, chunked, n_classes': (lambda: SoftSilhouetteLoss(distance='cosine', chunk_size=5, n_classes=K), lambda y: (y,)),
    'supcon, labels': (SupConLoss, lambda y: (y,)),
    'supcon, L_in, chunked': (lambda: SupConLoss(variant='in', chunk_size=5), lambda y: (y,)),
    'supcon, no labels (SimCLR)': (SupConLoss, lambda y: ()),
    'supcon, mask': (lambda: SupConLoss(base_temperature=0.07), lambda y: (None, (y[:, None] == y[None]) | torch.eye(B, dtype=torch.bool))),
    'supcon, 0/1 mask': (SupConLoss, lambda y: (None, (y[:, None] == y[None]).float())),
    'gaussian corel': (lambda: GaussianCOREL(K, D), lambda y: (y,)),
    'cosine corel': (lambda: CosineCOREL(K, D), lambda y: (y,)),
}


def _setup(name, seed=0):
    make, args = CASES[name]
    torch.manual_seed(seed)
    enc, loss = torch.nn.Linear(D_IN, D).double(), make().double()
    x, y = _batch(seed)
    x = x.double()
    if name.startswith('supcon'): x = _views(x)
    return enc, loss, x, args(y)


def _step(enc, loss):
    def step(x, *args): return loss(enc(x), *args)
    return step


@pytest.mark.parametrize('name', list(CASES))
def test_a_compiled_step_with_default_settings_is_one_graph(name):
    enc, loss, x, args = _setup(name)
    torch._dynamo.reset(); counters.clear()
    out = torch.compile(_step(enc, loss), backend='eager')(x, *args)
    out.backward()
    assert dict(counters['graph_break']) == {}, dict(counters['graph_break'])
    assert torch._dynamo.explain(_step(enc, loss))(x, *args).graph_break_count == 0
    g = enc.weight.grad.clone()
    enc.weight.grad = None
    ref = _step(enc, loss)(x, *args)
    ref.backward()
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(g, enc.weight.grad, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize('name', ['soft silhouette, n_classes', 'supcon, labels', 'supcon, mask', 'gaussian corel'])
def test_the_checks_still_break_when_asked_for_and_stay_on_eagerly(name):
    "The check of the check: validate_args=True under compilation reads values (graph breaks); the eager default checks."
    enc, loss, x, args = _setup(name)
    loss.validate_args = True
    torch._dynamo.reset()
    assert torch._dynamo.explain(_step(enc, loss))(x, *args).graph_break_count > 0
    loss.validate_args = None
    torch.compile(_step(enc, loss), backend='eager')(x, *args)     # compiled once ...
    nan = torch.full_like(x, math.nan)
    with pytest.raises(ValueError, match='NaN'): _step(enc, loss)(nan, *args)   # ... the eager default still checks
    compiled = torch.compile(_step(enc, loss), backend='eager')(nan, *args)   # compiled: unchecked, as documented ...
    loss.validate_args = False
    torch.testing.assert_close(compiled, _step(enc, loss)(nan, *args), equal_nan=True)   # ... as validate_args=False


def test_the_one_documented_break_is_the_class_count():
    "Without n_classes the silhouette reads K on the host: that read, and nothing else, breaks the graph."
    torch.manual_seed(0)
    enc, loss = torch.nn.Linear(D_IN, D), SoftSilhouetteLoss()
    x, y = _batch()
    torch._dynamo.reset()
    e = torch._dynamo.explain(_step(enc, loss))(x, y)
    assert e.graph_break_count >= 1
    assert all(b.user_stack[-1].name == '_codes' and 'int(codes.max()) + 1' in b.user_stack[-1].line for b in e.break_reasons)
    torch._dynamo.reset()
    assert torch._dynamo.explain(_step(enc, SoftSilhouetteLoss(n_classes=K)))(x, y).graph_break_count == 0


@pytest.mark.slow
@pytest.mark.parametrize('name', ['soft silhouette, n_classes', 'supcon, labels', 'supcon, no labels (SimCLR)'])
def test_inductor_step_is_one_graph(name):
    enc, loss, x, args = _setup(name)
    torch._dynamo.reset(); counters.clear()
    out = torch.compile(_step(enc, loss))(x, *args)
    out.backward()
    assert dict(counters['graph_break']) == {}
    torch.testing.assert_close(out, _step(enc, loss)(x, *args), atol=1e-10, rtol=1e-10)
