"Spec, oracle, gradient, multi-view, prediction and bad-input checks of `silhouette_nb.objectives`."
import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import ProxyNCALoss

from silhouette_nb.corel import CosineCOREL, GaussianCOREL
from silhouette_nb.objectives import OBJECTIVES, Objective, make_objective
from silhouette_nb.heads import CenterLoss, center_loss
from silhouette_nb.silhouette import soft_silhouette_loss
from silhouette_nb.supcon import flatten_views, supcon_loss

K, D, B = 5, 8, 20
ALL_TERMS = {'ce': ('ce',), 'ce+sil': ('ce', 'sil'), 'supcon': ('supcon',), 'ce+supcon': ('ce', 'supcon'),
             'ce+sil+supcon': ('ce', 'sil', 'supcon'), 'proxynca': ('proxynca',), 'ce+center': ('ce', 'center'),
             'corel-gaussian': ('corel',), 'corel-cosine': ('corel',)}
HEADS = {'proxynca': ProxyNCALoss, 'ce+center': CenterLoss, 'corel-gaussian': GaussianCOREL, 'corel-cosine': CosineCOREL}


def batch(b=B, k=K, d=D, views=None, seed=0, dtype=torch.float32):
    "Random features (b, d) or (b, views, d) and logits (b, k) that require grad, labels with repeats."
    g = torch.Generator().manual_seed(seed)
    shape = (b, d) if views is None else (b, views, d)
    f = torch.randn(shape, generator=g).to(dtype).requires_grad_()
    z = torch.randn(b, k, generator=g).to(dtype).requires_grad_()
    y = torch.arange(b) % k
    return {'features': f, 'logits': z}, y


def all_finite(*ts): return all(bool(torch.isfinite(t).all()) for t in ts)


# ------------------------------------------------------------------------------------------------- specs and attributes
def test_objectives_tuple():
    assert OBJECTIVES == tuple(ALL_TERMS)


@pytest.mark.parametrize('spec', OBJECTIVES)
def test_attributes(spec):
    obj = make_objective(spec, K, D)
    assert isinstance(obj, Objective) and isinstance(obj, torch.nn.Module)
    assert obj.spec == spec and obj.terms == ALL_TERMS[spec]
    assert isinstance(obj.needs, frozenset) and obj.needs <= {'logits', 'features', 'views'}
    assert ('logits' in obj.needs) == ('ce' in obj.terms)
    assert ('features' in obj.needs) == (spec != 'ce')
    assert ('views' in obj.needs) == obj.needs_positives == ('supcon' in obj.terms)
    if spec in HEADS:
        assert isinstance(obj.head, HEADS[spec])
        head_params = {id(p) for p in obj.head.parameters()}
        assert head_params and head_params <= {id(p) for p in obj.parameters()}  # the optimiser sees them
    else:
        assert obj.head is None and not list(obj.parameters())


def test_defaults_and_weights():
    obj = make_objective('ce+sil+supcon', K, D)
    assert obj.weights == {'ce': 1., 'sil': 1., 'supcon': 1.}
    assert obj.sil.temperature == 0.01 and obj.sil.distance == 'euclidean' and obj.supcon.temperature == 0.1
    assert make_objective('ce+center', K, D, lam=0.3).weights == {'ce': 1., 'center': 0.3}
    assert make_objective('ce+supcon', K, D, lam=0.3, mu=0.7).weights == {'ce': 1., 'supcon': 0.7}
    assert make_objective('supcon', K, D, mu=0.7).weights == {'supcon': 1.}   # one term: weight 1
    assert make_objective('corel-gaussian', K, D).head.lam == 0.5
    assert make_objective('corel-cosine', K, D, corel_lam=0.8).head.lam == 0.8
    assert make_objective(' CE + Sil ', K, D).spec == 'ce+sil'


@pytest.mark.parametrize('spec', ['ce+silhouette', 'sil', 'sil+ce', 'center', '', 'supcon2'])
def test_unknown_spec_lists_valid_ones(spec):
    with pytest.raises(ValueError) as e: make_objective(spec, K, D)
    assert repr(spec) in str(e.value)
    for s in OBJECTIVES: assert s in str(e.value)


def test_non_string_spec():
    with pytest.raises(ValueError, match='valid specs'): make_objective(None, K, D)


@pytest.mark.parametrize('kw, msg', [(dict(lam=-0.1), 'lam must be'), (dict(mu=math.inf), 'mu must be'),
                                     (dict(mu=math.nan), 'mu must be'), (dict(lam='1'), 'lam must be'),
                                     (dict(sil_temperature=0), 'sil_temperature'),
                                     (dict(supcon_temperature=-1), 'supcon_temperature'),
                                     (dict(sil_temperature=math.inf), 'sil_temperature'),
                                     (dict(sil_distance='manhattan'), 'sil_distance'),
                                     (dict(corel_lam=1.5), 'corel_lam'),
                                     (dict(n_classes=0), 'n_classes'), (dict(dim=True), 'dim'),
                                     (dict(dim=2.0), 'dim')])
def test_bad_arguments(kw, msg):
    args = dict(spec='ce+sil+supcon', n_classes=K, dim=D) | kw
    with pytest.raises(ValueError, match=msg): make_objective(**args)


# --------------------------------------------------------------------------------------------------- forward, gradients
@pytest.mark.parametrize('spec', OBJECTIVES)
def test_forward_keys_finite_loss_and_gradients(spec):
    obj = make_objective(spec, K, D, lam=0.5, mu=0.2)
    out, y = batch()
    r = obj(out, y)
    assert list(r) == ['loss', *obj.terms]
    assert all(v.ndim == 0 and v.dtype == torch.float32 and torch.isfinite(v) for v in r.values())
    r['loss'].backward()
    assert out['features'].grad is not None or spec == 'ce'
    assert out['logits'].grad is not None or 'ce' not in obj.terms
    assert all_finite(*(t.grad for t in out.values() if t.grad is not None))
    for p in obj.parameters():
        assert p.grad is not None and all_finite(p.grad) and bool(p.grad.abs().sum() > 0), spec


def hand_terms(obj, out, y):
    "Every term from the lower modules and PML, called directly."
    f, z = out['features'], out['logits']
    x, yf, V = flatten_views(f, y)
    zf = z.transpose(0, 1).reshape(-1, z.shape[-1]) if z.ndim == 3 else z
    t = {}
    if 'ce' in obj.terms: t['ce'] = F.cross_entropy(zf, y.repeat(len(zf) // len(y)))
    if 'sil' in obj.terms: t['sil'] = soft_silhouette_loss(x, yf, obj.sil.temperature, obj.sil.distance)
    if 'supcon' in obj.terms: t['supcon'] = supcon_loss(f, y, obj.supcon.temperature)
    if 'center' in obj.terms: t['center'] = center_loss(x, obj.head.centers, yf)
    if 'corel' in obj.terms:
        cls = GaussianCOREL if obj.spec == 'corel-gaussian' else CosineCOREL
        ref = cls(K, D, lam=obj.head.lam)
        ref.load_state_dict(obj.head.state_dict())
        t['corel'] = ref(x, yf)
    if 'proxynca' in obj.terms:
        ref = ProxyNCALoss(K, D)
        ref.load_state_dict(obj.head.state_dict())
        t['proxynca'] = ref(F.normalize(x, dim=1), yf)
        # on nonzero rows the extra normalisation in front of PML changes nothing but rounding
        torch.testing.assert_close(ref(x, yf), t['proxynca'], rtol=1e-6, atol=1e-6)
    return t


@pytest.mark.parametrize('views', [None, 2])
@pytest.mark.parametrize('spec', OBJECTIVES)
def test_total_is_the_hand_written_combination(spec, views):
    lam, mu = 0.37, 1.9
    obj = make_objective(spec, K, D, lam=lam, mu=mu, sil_temperature=0.05, supcon_temperature=0.2)
    out, y = batch(views=views, seed=3)
    if views: out['logits'] = torch.randn(B * views, K)
    r = obj(out, y)
    t = hand_terms(obj, out, y)
    for k in obj.terms:
        if k == 'proxynca': torch.testing.assert_close(r[k], t[k], rtol=1e-6, atol=1e-7)
        else: assert torch.equal(r[k], t[k]), (k, r[k], t[k])
    w = {'ce': 1., 'sil': lam, 'supcon': mu, 'center': lam} if len(obj.terms) > 1 else {obj.terms[0]: 1.}
    hand = sum(w[k] * r[k] for k in obj.terms)
    assert torch.equal(r['loss'], hand)
    if spec == 'ce+sil+supcon': assert torch.equal(r['loss'], r['ce'] + lam * r['sil'] + mu * r['supcon'])
    if spec == 'ce+center': assert torch.equal(r['loss'], r['ce'] + lam * r['center'])


# ------------------------------------------------------------------------------------------------------------- CenterLoss
def loop_center(x, C, y):
    "½ · mean_i ||x_i − c_{y_i}||² with Python floats."
    x, C, y = x.tolist(), C.tolist(), y.tolist()
    return sum(0.5 * sum((a - b) ** 2 for a, b in zip(x[i], C[y[i]])) for i in range(len(x))) / len(x)


@pytest.mark.parametrize('seed', range(5))
def test_center_loss_against_loop(seed):
    g = torch.Generator().manual_seed(seed)
    n, k, d = 3 + seed * 7, 2 + seed, 1 + 2 * seed
    x, C = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(k, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (n,), generator=g)
    assert math.isclose(center_loss(x, C, y).item(), loop_center(x, C, y), rel_tol=1e-12)
    m = CenterLoss(k, d).double()
    with torch.no_grad(): m.centers.copy_(C)
    assert math.isclose(m(x, y).item(), loop_center(x, C, y), rel_tol=1e-12)
    assert math.isclose(center_loss(x.float(), C.float(), y).item(), loop_center(x, C, y), rel_tol=1e-5)


def test_center_loss_gradcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    C = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 0, 1, 2, 2, 0])
    assert torch.autograd.gradcheck(lambda a, c: center_loss(a, c, y), (x, C))
    assert torch.autograd.gradgradcheck(lambda a, c: center_loss(a, c, y), (x, C))


def test_center_loss_module():
    m = CenterLoss(3, 2)
    assert isinstance(m.centers, torch.nn.Parameter) and m.centers.shape == (3, 2) and not m.centers.any()
    x, y = torch.randn(6, 2), torch.tensor([0, 0, 1, 1, 2, 2])
    m(x, y).backward()
    expected = torch.stack([(m.centers[j] - x[y == j]).sum(0) / 6 for j in range(3)]).detach()
    torch.testing.assert_close(m.centers.grad, expected)                   # dL/dc_j = (1/B) Σ_{y_i=j} (c_j − x_i)
    with pytest.raises(ValueError, match='n_classes = 3'): m(x, torch.tensor([0, 0, 1, 1, 2, 3]))
    with pytest.raises(ValueError, match='dim'): m(torch.randn(6, 3), y)
    with pytest.raises(ValueError, match='n_classes'): CenterLoss(0, 2)
    assert center_loss(x.half(), m.centers, y).dtype == torch.float32


def test_objective_gradcheck_float64():
    "The whole objective, head parameters included, differentiates correctly in float64."
    from torch.func import functional_call
    g = torch.Generator().manual_seed(1)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    for spec in ('ce+center', 'corel-gaussian', 'corel-cosine', 'ce+sil', 'proxynca'):
        obj = make_objective(spec, 3, 4, lam=0.5, sil_temperature=0.5).double()
        names = [n for n, _ in obj.named_parameters()]
        ps = tuple(p.detach().clone().requires_grad_() for _, p in obj.named_parameters())
        f = torch.randn(8, 4, generator=g, dtype=torch.float64, requires_grad=True)
        z = torch.randn(8, 3, generator=g, dtype=torch.float64, requires_grad=True)
        fn = lambda f, z, *ps: functional_call(obj, dict(zip(names, ps)), ({'features': f, 'logits': z}, y))['loss']
        assert torch.autograd.gradcheck(fn, (f, z, *ps)), spec


# ------------------------------------------------------------------------------------------------------------ multi-view
@pytest.mark.parametrize('spec', OBJECTIVES)
def test_multiview_logit_layouts_agree(spec):
    obj = make_objective(spec, K, D, lam=0.5, mu=0.5)
    out, y = batch(views=3, seed=5)
    zf = torch.randn(B * 3, K)                                           # view-major rows
    r_flat = obj({'features': out['features'], 'logits': zf}, y)
    r_bvk = obj({'features': out['features'], 'logits': zf.reshape(3, B, K).transpose(0, 1)}, y)
    for k in r_flat: torch.testing.assert_close(r_flat[k], r_bvk[k], rtol=0, atol=0)
    r_one = obj({'features': out['features'], 'logits': zf[:B]}, y)    # one logit row per sample
    if 'ce' in obj.terms: torch.testing.assert_close(r_one['ce'], F.cross_entropy(zf[:B], y))


def test_multiview_non_supcon_terms_see_flattened_views():
    obj = make_objective('ce+sil+supcon', K, D)
    out, y = batch(views=2, seed=2)
    out['logits'] = torch.randn(B * 2, K)
    r = obj(out, y)
    x, yf, _ = flatten_views(out['features'], y)
    assert torch.equal(r['sil'], soft_silhouette_loss(x, yf))
    assert torch.equal(r['supcon'], supcon_loss(out['features'], y))
    cobj = make_objective('ce+center', K, D)
    torch.testing.assert_close(cobj(out, y)['center'], center_loss(x, cobj.head.centers, yf))


def test_multiview_logit_row_count_must_match():
    obj = make_objective('ce+sil', K, D)
    out, y = batch(views=2)
    with pytest.raises(ValueError, match='one per sample'): obj({'features': out['features'], 'logits': torch.randn(3 * B, K)}, y)
    with pytest.raises(ValueError, match='logits'): obj({'features': out['features'], 'logits': torch.randn(B + 1, K)}, y)


# -------------------------------------------------------------------------------------------------------------- predict
@pytest.mark.parametrize('spec', OBJECTIVES)
def test_predict(spec):
    obj = make_objective(spec, K, D)
    out, y = batch()
    if spec == 'supcon':
        with pytest.raises(ValueError, match='linear probe'): obj.predict({'features': out['features']})
    p = obj.predict(out)
    assert p.shape == (B,) and p.dtype == torch.int64 and bool(((p >= 0) & (p < K)).all())
    f = out['features'].detach()
    if 'ce' in obj.terms or spec == 'supcon': assert torch.equal(p, out['logits'].argmax(1))
    elif spec.startswith('corel'): assert torch.equal(p, obj.head.predict(f))
    else:
        P = obj.head.proxies.detach()
        assert torch.equal(p, (F.normalize(f, dim=1) @ F.normalize(P, dim=1).T).argmax(1))   # nearest proxy


def test_predict_heads_ignore_untrained_logits_and_flatten_views():
    out, y = batch(views=2)
    for spec in ('proxynca', 'corel-gaussian', 'corel-cosine'):
        obj = make_objective(spec, K, D)
        p = obj.predict(out)
        assert p.shape == (2 * B,)
        x, _, _ = flatten_views(out['features'].detach(), y)
        assert torch.equal(p, obj.predict({'features': x}))
    with pytest.raises(ValueError, match="needs outputs\\['logits'\\]"): make_objective('ce', K, D).predict({'features': out['features']})


def test_predict_trained_heads_are_accurate():
    "On well-separated features each head, trained briefly, predicts every training sample right."
    torch.manual_seed(0)
    y = torch.arange(60) % 3
    f = 3 * F.one_hot(y, 4).float() + 0.2 * torch.randn(60, 4)
    for spec in ('proxynca', 'corel-gaussian', 'corel-cosine', 'ce+center'):
        obj = make_objective(spec, 3, 4)
        clf = torch.nn.Linear(4, 3)
        opt = torch.optim.Adam([*obj.parameters(), *clf.parameters()], lr=0.1)
        for _ in range(60):
            opt.zero_grad(); obj({'features': f, 'logits': clf(f)}, y)['loss'].backward(); opt.step()
        assert torch.equal(obj.predict({'features': f, 'logits': clf(f)}), y), spec


# ------------------------------------------------------------------------------------------------------- check_outputs
@pytest.mark.parametrize('spec', OBJECTIVES)
def test_check_outputs_accepts_a_good_batch(spec):
    out, y = batch()
    assert make_objective(spec, K, D).check_outputs(out, y) is None


@pytest.mark.parametrize('spec', [s for s in OBJECTIVES if 'supcon' in s])
def test_check_outputs_no_positive_pair(spec):
    obj = make_objective(spec, K, D)
    out, y = batch(b=K)                          # K samples, K distinct labels
    with pytest.raises(ValueError, match='positive pair') as e: obj.check_outputs(out, y)
    assert 'views=2' in str(e.value) and 'balanced' in str(e.value)
    r = obj(out, y)                              # forward still works: the SupCon term is 0
    assert r['supcon'] == 0 and torch.isfinite(r['loss'])
    out1, _ = batch(b=K, views=1)
    with pytest.raises(ValueError, match='positive pair'): obj.check_outputs(out1, y)
    out2, _ = batch(b=K, views=2)
    obj.check_outputs(out2, y)                   # two views: every sample has a positive
    out['features'] = out['features'].detach()
    y2 = y.clone(); y2[1] = y2[0]
    obj.check_outputs(out, y2)                   # one view with one repeated class: legal, PML-style


@pytest.mark.parametrize('spec', [s for s in OBJECTIVES if 'supcon' not in s])
def test_check_outputs_distinct_labels_fine_without_supcon(spec):
    out, y = batch(b=K)
    make_objective(spec, K, D).check_outputs(out, y)


BAD = [
    (lambda o, y: ({'features': o['features']}, y), "needs outputs\\['logits'\\]", 'ce+sil'),
    (lambda o, y: ({'logits': o['logits']}, y), "needs outputs\\['features'\\]", 'ce+sil'),
    (lambda o, y: ({'logits': o['logits'][:, :3], 'features': o['features']}, y), 'must be \\(B, 5\\)', 'ce'),
    (lambda o, y: ({'logits': o['logits'], 'features': o['features'][:, :3]}, y), '\\(B, 8\\)', 'proxynca'),
    (lambda o, y: ({'logits': o['logits'], 'features': o['features'][:5]}, y), 'B = 20', 'corel-cosine'),
    (lambda o, y: ({'logits': o['logits'], 'features': o['features'][None]}, y), 'with B = 20', 'ce+center'),
    (lambda o, y: ({'logits': o['logits'].long(), 'features': o['features']}, y), 'floating-point', 'ce'),
    (lambda o, y: ({'logits': o['logits'] * math.nan, 'features': o['features']}, y), 'NaN', 'ce'),
    (lambda o, y: ({'logits': o['logits'], 'features': o['features'] * math.inf}, y), 'NaN or infinite', 'ce+sil'),
    (lambda o, y: (o, y + K), 'labels must be in 0..4', 'supcon'),
    (lambda o, y: (o, y - 1), 'labels must be in 0..4', 'corel-gaussian'),
    (lambda o, y: (o, y.float()), 'labels must be integers', 'ce'),
    (lambda o, y: (o, y[:, None]), '1-D', 'ce'),
    (lambda o, y: (o, y[:0]), 'empty', 'ce'),
    (lambda o, y: (o, y[:10]), 'B = 10', 'ce+sil'),
]


@pytest.mark.parametrize('make, msg, spec', BAD)
def test_check_outputs_and_forward_errors(make, msg, spec):
    out, y = batch()
    obj = make_objective(spec, K, D)
    o, yy = make(out, y)
    with pytest.raises(ValueError, match=msg): obj.check_outputs(o, yy)
    with pytest.raises(ValueError, match=msg): obj(o, yy)


def test_outputs_must_be_a_dict():
    out, y = batch()
    with pytest.raises(TypeError, match='dict'): make_objective('ce', K, D)(out['logits'], y)
    with pytest.raises(TypeError, match='labels'): make_objective('ce', K, D)(out, y.tolist())


# ------------------------------------------------------------------------------------------ degenerate batches, precision
def degenerate_batches():
    g = torch.Generator().manual_seed(0)
    yield 'one class', torch.randn(8, D, generator=g), torch.full((8,), 2)
    yield 'all duplicates', torch.ones(8, D), torch.arange(8) % K
    yield 'one class, duplicates', torch.ones(8, D), torch.zeros(8, dtype=torch.long)
    yield 'zero features', torch.zeros(8, D), torch.arange(8) % K
    yield 'single sample', torch.randn(1, D, generator=g), torch.tensor([1])
    yield 'two samples, two classes', torch.randn(2, D, generator=g), torch.tensor([0, 1])


@pytest.mark.parametrize('spec', OBJECTIVES)
def test_degenerate_batches_finite(spec):
    obj = make_objective(spec, K, D, lam=0.5, mu=0.5)
    for name, f, y in degenerate_batches():
        for views in (None, 2):
            ff = (f if views is None else torch.stack([f, f], 1)).clone().requires_grad_()
            z = torch.zeros(len(y), K, requires_grad=True)
            obj.zero_grad()
            r = obj({'features': ff, 'logits': z}, y)
            assert all(torch.isfinite(v) for v in r.values()), (spec, name, views, r)
            r['loss'].backward()
            grads = [t.grad for t in (ff, z) if t.grad is not None] + [p.grad for p in obj.parameters() if p.grad is not None]
            assert all_finite(*grads), (spec, name, views)
            assert all(float(g.abs().max()) < 1e4 for g in grads), (spec, name, views)   # no 1/eps blow-up


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('spec', OBJECTIVES)
def test_half_precision(spec, dtype):
    obj = make_objective(spec, K, D, lam=0.5, mu=0.5)
    out, y = batch(dtype=dtype, seed=4)
    r = obj(out, y)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in r.values())
    r['loss'].backward()
    assert all_finite(*(t.grad for t in out.values() if t.grad is not None))
    assert all(p.dtype == torch.float32 and all_finite(p.grad) for p in obj.parameters())  # PML's proxies stay float32
    ref, _ = batch(seed=4)
    r32 = obj({k: v.detach().to(dtype).float() for k, v in ref.items()}, y)
    torch.testing.assert_close(r['loss'], r32['loss'], rtol=1e-5, atol=1e-5)   # the same numbers, computed in float32
    assert all_finite(*(p for p in obj.parameters()))


def test_half_precision_large_logits_stay_finite():
    obj = make_objective('ce+sil+supcon', K, D)
    out, y = batch(dtype=torch.float16)
    out = {'features': (out['features'].detach() * 1000).half(), 'logits': (out['logits'].detach() * 1e4).half()}
    r = obj(out, y)
    assert all(torch.isfinite(v) for v in r.values())
