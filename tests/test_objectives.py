"Spec, oracle, gradient, multi-view, prediction and bad-input checks of `silhouette_nb.objectives`."
import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import ProxyNCALoss as PMLProxyNCALoss

from silhouette_nb.corel import CosineCOREL, GaussianCOREL
from silhouette_nb.objectives import OBJECTIVES, OBJECTIVE_OPTIONS, RENAMED_OPTIONS, Objective, make_objective, spec_requirements
from silhouette_nb.validation import count_syncs
from silhouette_nb.heads import CenterLoss, LinearClassifier, ProxyNCALoss, center_loss, proxy_nca_logits, proxy_nca_loss
from silhouette_nb.validation import set_default_validate_args
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
    req = obj.requirements
    assert req == spec_requirements(spec) and set(req) == {'logits', 'features', 'positives', 'two_stage', 'head'}
    assert req['logits'] == ('ce' in obj.terms)
    assert req['features'] == (spec != 'ce')
    assert req['positives'] == ('supcon' in obj.terms)
    assert req['two_stage'] == (spec == 'supcon')
    assert req['head'] == (spec in HEADS)
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
    assert make_objective('ce+center', K, D).weights == {'ce': 1., 'center': 0.01}   # Wen et al.'s range, not 1
    assert make_objective('ce+center', K, D, center_weight=0.3).weights == {'ce': 1., 'center': 0.3}
    assert make_objective('ce+supcon', K, D, sil_weight=0.3, supcon_weight=0.7).weights == {'ce': 1., 'supcon': 0.7}
    assert make_objective('supcon', K, D, supcon_weight=0.7).weights == {'supcon': 1.}   # one term: weight 1
    assert make_objective('corel-gaussian', K, D).head.attraction == 0.5
    assert make_objective('corel-cosine', K, D, corel_attraction=0.8).head.attraction == 0.8
    assert make_objective(' CE + Sil ', K, D).spec == 'ce+sil'


@pytest.mark.parametrize('spec', ['ce+silhouette', 'sil', 'sil+ce', 'center', '', 'supcon2'])
def test_unknown_spec_lists_valid_ones(spec):
    with pytest.raises(ValueError) as e: make_objective(spec, K, D)
    assert repr(spec) in str(e.value)
    for s in OBJECTIVES: assert s in str(e.value)


def test_non_string_spec():
    with pytest.raises(ValueError, match='choose one of'): make_objective(None, K, D)


@pytest.mark.parametrize('kw, exc, msg', [
    (dict(sil_weight=-0.1), ValueError, 'sil_weight must be'), (dict(supcon_weight=math.inf), ValueError, 'supcon_weight must be'),
    (dict(supcon_weight=math.nan), ValueError, 'supcon_weight must be'), (dict(sil_weight='1'), TypeError, 'sil_weight must be'),
    (dict(center_weight=-1), ValueError, 'center_weight must be'), (dict(center_weight=True), TypeError, 'center_weight'),
    (dict(sil_temperature=0), ValueError, 'sil_temperature'), (dict(supcon_temperature=-1), ValueError, 'supcon_temperature'),
    (dict(sil_temperature=math.inf), ValueError, 'sil_temperature'), (dict(sil_temperature=None), TypeError, 'sil_temperature'),
    (dict(supcon_temperature='0.1'), TypeError, 'supcon_temperature'), (dict(sil_temperature=True), TypeError, 'sil_temperature'),
    (dict(sil_distance='manhattan'), ValueError, 'sil_distance'), (dict(corel_attraction=1.5), ValueError, 'corel_attraction'),
    (dict(n_classes=0), ValueError, 'n_classes'), (dict(dim=True), TypeError, 'dim'), (dict(dim=2.0), TypeError, 'dim')])
def test_bad_arguments(kw, exc, msg):
    args = dict(spec='ce+sil+supcon', n_classes=K, dim=D) | kw
    with pytest.raises(exc, match=msg): make_objective(**args)


# --------------------------------------------------------------------------------------------------- forward, gradients
@pytest.mark.parametrize('spec', OBJECTIVES)
def test_forward_keys_finite_loss_and_gradients(spec):
    obj = make_objective(spec, K, D, sil_weight=0.5, supcon_weight=0.2, center_weight=0.5)
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
        ref = cls(K, D, attraction=obj.head.attraction)
        ref.load_state_dict(obj.head.state_dict())
        t['corel'] = ref(x, yf)
    if 'proxynca' in obj.terms:
        ref = PMLProxyNCALoss(K, D)
        ref.load_state_dict(obj.head.state_dict())
        t['proxynca'] = ref(F.normalize(x, dim=1), yf)
        # on nonzero rows the extra normalisation in front of PML changes nothing but rounding
        torch.testing.assert_close(ref(x, yf), t['proxynca'], rtol=1e-6, atol=1e-6)
    return t


@pytest.mark.parametrize('views', [None, 2])
@pytest.mark.parametrize('spec', OBJECTIVES)
def test_total_is_the_hand_written_combination(spec, views):
    lam, mu = 0.37, 1.9
    obj = make_objective(spec, K, D, sil_weight=lam, center_weight=lam, supcon_weight=mu, sil_temperature=0.05,
                         supcon_temperature=0.2)
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
        obj = make_objective(spec, 3, 4, sil_weight=0.5, center_weight=0.5, sil_temperature=0.5).double()
        names = [n for n, _ in obj.named_parameters()]
        ps = tuple(p.detach().clone().requires_grad_() for _, p in obj.named_parameters())
        f = torch.randn(8, 4, generator=g, dtype=torch.float64, requires_grad=True)
        z = torch.randn(8, 3, generator=g, dtype=torch.float64, requires_grad=True)
        fn = lambda f, z, *ps: functional_call(obj, dict(zip(names, ps)), ({'features': f, 'logits': z}, y))['loss']
        assert torch.autograd.gradcheck(fn, (f, z, *ps)), spec


# ------------------------------------------------------------------------------------------------------------ multi-view
@pytest.mark.parametrize('spec', OBJECTIVES)
def test_multiview_logit_layouts_agree(spec):
    obj = make_objective(spec, K, D, sil_weight=0.5, center_weight=0.5, supcon_weight=0.5)
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
    obj = make_objective(spec, K, D, sil_weight=0.5, center_weight=0.5, supcon_weight=0.5)
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
    obj = make_objective(spec, K, D, sil_weight=0.5, center_weight=0.5, supcon_weight=0.5)
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


# ------------------------------------------------------------------------------------- Proxy-NCA against PML, in float64
@pytest.mark.parametrize('seed, n, k, d, scale', [(0, 20, 5, 8, 1.), (1, 64, 10, 16, 1.), (2, 7, 3, 2, 1.), (3, 33, 12, 5, 1.),
                                                  (4, 20, 5, 8, 3.), (5, 50, 100, 32, 1.)])
def test_proxy_nca_equals_pml_in_float64(seed, n, k, d, scale):
    "Our Proxy-NCA (loss, logits, gradients of embeddings and proxies) is PML's `ProxyNCALoss`, to 1e-6 in float64."
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) * torch.rand(n, 1, generator=g, dtype=torch.float64) * 10)
    y = torch.randint(0, k, (n,), generator=g)
    ours, pml = ProxyNCALoss(k, d, softmax_scale=scale).double(), PMLProxyNCALoss(k, d, softmax_scale=scale).double()
    with torch.no_grad(): ours.proxies.copy_(3 * torch.randn(k, d, generator=g, dtype=torch.float64))
    pml.load_state_dict(ours.state_dict())                                       # the same parameter name: `proxies`
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    la, lb = ours(xa, y), pml(xb, y)
    torch.testing.assert_close(la, lb, rtol=1e-6, atol=1e-6)
    la.backward(); lb.backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours.proxies.grad, pml.proxies.grad, rtol=1e-6, atol=1e-9)
    with torch.no_grad():
        torch.testing.assert_close(ours.logits(x), -scale * pml.get_logits(x), rtol=1e-6, atol=1e-9)
        assert torch.equal(ours.predict(x), pml.get_logits(x).argmin(1))         # the nearest proxy
    torch.testing.assert_close(proxy_nca_loss(x, ours.proxies, y, scale), la, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(proxy_nca_logits(x, ours.proxies, scale), ours.logits(x), rtol=0, atol=0)


def test_proxy_nca_init_and_zero_rows():
    torch.manual_seed(0); ours = ProxyNCALoss(4, 6)
    torch.manual_seed(0); pml = PMLProxyNCALoss(4, 6)
    assert torch.equal(ours.proxies, pml.proxies)                                 # the same N(0, 1) draw for a seed
    x = torch.randn(5, 6, dtype=torch.float64); x[2] = 0
    x.requires_grad_()
    loss = ours.double()(x, torch.tensor([0, 1, 2, 3, 0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.equal(x.grad[2], torch.zeros(6, dtype=torch.float64))   # a zero row: gradient 0


# ------------------------------------------------------------------------------------------------- one head interface
HEAD_MODULES = [lambda: LinearClassifier(K, D), lambda: ProxyNCALoss(K, D), lambda: CenterLoss(K, D),
                lambda: GaussianCOREL(K, D), lambda: CosineCOREL(K, D)]


@pytest.mark.parametrize('make', HEAD_MODULES)
def test_every_head_answers_logits_predict_and_loss(make):
    head = make()
    with torch.no_grad():
        for p in head.parameters(): p.add_(torch.randn_like(p))          # centres start at 0: make them distinct
    out, y = batch()
    x = out['features'].detach()
    logits = head.logits(x)
    assert logits.shape == (B, K) and logits.dtype == torch.float32
    assert torch.equal(head.predict(x), logits.argmax(1))
    loss = head(out['features'], y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert out['features'].grad is not None and all(p.grad is not None for p in head.parameters())
    assert (head.n_classes, head.dim) == (K, D) and head.vectors.shape == (K, D)


def test_linear_classifier_is_nn_linear():
    torch.manual_seed(3); lin = LinearClassifier(K, D)
    torch.manual_seed(3); ref = torch.nn.Linear(D, K)
    assert torch.equal(lin.weight, ref.weight) and torch.equal(lin.bias, ref.bias)
    x, y = torch.randn(9, D), torch.arange(9) % K
    torch.testing.assert_close(lin.logits(x), ref(x), rtol=0, atol=0)
    torch.testing.assert_close(lin(x, y), F.cross_entropy(ref(x), y), rtol=0, atol=0)
    assert set(lin.state_dict()) == set(ref.state_dict()) == {'weight', 'bias'}


# ------------------------------------------------------------------------------------------------- renamed options
@pytest.mark.parametrize('old, new', [(dict(lam=0.3), dict(sil_weight=0.3, center_weight=0.3)),
                                      (dict(mu=0.7), dict(supcon_weight=0.7)),
                                      (dict(corel_lam=0.8), dict(corel_attraction=0.8))])
def test_old_option_names_still_work_with_a_deprecation_warning(old, new):
    for spec in ('ce+sil+supcon', 'ce+center', 'corel-cosine'):
        with pytest.warns(DeprecationWarning, match=f'`{next(iter(old))}` is deprecated'): o = make_objective(spec, K, D, **old)
        n = make_objective(spec, K, D, **new)
        assert o.weights == n.weights
        if o.head is not None and hasattr(o.head, 'attraction'): assert o.head.attraction == n.head.attraction
    assert set(RENAMED_OPTIONS) == {'lam', 'mu', 'corel_lam'}


def test_options_are_declared_once():
    import inspect
    assert OBJECTIVE_OPTIONS == ('sil_weight', 'center_weight', 'supcon_weight', 'sil_temperature', 'supcon_temperature',
                                 'sil_distance', 'sil_normalize', 'sil_minimum', 'sil_delta', 'sil_warmup', 'corel_attraction',
                                 'gather', 'validate_args')
    assert list(inspect.signature(make_objective).parameters) == ['spec', 'n_classes', 'dim', *OBJECTIVE_OPTIONS]   # forwarded
    with pytest.raises(TypeError, match="unexpected keyword argument 'sil_wieght'"): make_objective('ce', K, D, sil_wieght=1)


# ------------------------------------------------------------------------------------------- validate_args, no host sync
def test_validate_args_off_skips_the_value_checks_only():
    out, y = batch()
    obj = make_objective('ce+sil', K, D, validate_args=False)
    r = obj({'logits': out['logits'] * math.nan, 'features': out['features']}, y)
    assert torch.isnan(r['ce'])                                                  # not checked...
    with pytest.raises(ValueError, match='NaN'): obj.check_outputs({'logits': out['logits'] * math.nan, 'features': out['features']}, y)
    with pytest.raises(ValueError, match='labels must be in 0..4'): obj.check_outputs(out, y + K)   # ...except by check_outputs
    with pytest.raises(ValueError, match='must be \\(B, 5\\)'): obj({'logits': out['logits'][:, :3], 'features': out['features']}, y)
    with pytest.raises(ValueError, match='labels must be integers'): obj(out, y.float())
    assert make_objective('ce', K, D).validate_args is None                      # the package default


@pytest.fixture
def validation_off():
    set_default_validate_args(False)
    yield
    set_default_validate_args(True)


@pytest.mark.parametrize('spec', OBJECTIVES)
def test_no_host_sync_per_step_with_validation_off(spec, validation_off):
    "One forward and backward of the objective, validation off: no operation that makes the host wait for the device."
    obj = make_objective(spec, K, D, validate_args=False)
    out, y = batch(views=2)
    out['logits'] = torch.randn(2 * B, K, requires_grad=True)
    with count_syncs() as n: obj(out, y)['loss'].backward()
    assert sum(n.values()) == 0, dict(n)


def test_count_syncs_sees_what_syncs():
    x = torch.randn(6, 3, requires_grad=True)
    with count_syncs() as n:
        x.sum().item(); bool(x[0, 0] > 0); int(x.argmax()); x[x > 0]; torch.unique(x); x.nonzero(); x.tolist()
        torch.bincount(torch.tensor([0, 2])); torch.arange(3).repeat_interleave(torch.tensor([1, 2, 0]))
        m = torch.zeros(6, 3); m[x > 0] = 1
        (x[x > 0] ** 2).sum().backward()                        # backward of a masked select
    assert n['aten._local_scalar_dense'] == 3 and n['Tensor.tolist'] == 1 and n['aten.bincount'] == 1
    assert n['aten.index'] >= 2 and n['aten.nonzero'] == 1 and n['aten._unique2'] == 1 and n['aten.index_put_'] >= 1
    assert n['aten.repeat_interleave'] == 1
    with count_syncs() as n:                                    # none of these waits for the device
        z = torch.randn(6, 3, requires_grad=True)
        F.cross_entropy(z, torch.tensor([0, 1, 2, 0, 1, 2])).backward()
        torch.where(z > 0, z, 0).gather(1, torch.zeros(6, 1, dtype=torch.long)).index_select(0, torch.tensor([1, 2]))
        torch.arange(3).repeat_interleave(2)
    assert sum(n.values()) == 0, dict(n)


# ------------------------------------------------------------------------------------------------------------ autocast
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('spec', OBJECTIVES)
def test_objective_under_autocast(spec, dtype):
    "A model and the objective inside torch.autocast: float32 terms within 1e-2 of the float32 run, finite gradients."
    torch.manual_seed(0)
    enc, clf = torch.nn.Linear(12, D), torch.nn.Linear(D, K)
    obj = make_objective(spec, K, D, sil_weight=0.5, supcon_weight=0.5, center_weight=0.5)
    x, y = torch.randn(B, 2, 12), torch.arange(B) % K
    def step(ac):
        for m in (enc, clf, obj): m.zero_grad()
        with torch.autocast('cpu', dtype=dtype, enabled=ac):
            f = enc(x)
            r = obj({'features': f, 'logits': clf(f.transpose(0, 1).reshape(-1, D))}, y)
        r['loss'].backward()
        return r, [p.grad.clone() for m in (enc, clf, obj) for p in m.parameters() if p.grad is not None]
    r16, g16 = step(True)
    r32, g32 = step(False)
    assert all(v.dtype == torch.float32 for v in r16.values())
    for k in r32: torch.testing.assert_close(r16[k], r32[k], rtol=1e-2, atol=1e-2)
    assert len(g16) == len(g32) > 0 and all(torch.isfinite(g).all() for g in g16)


def test_heads_and_objectives_import_only_torch():
    "silhouette_nb.heads, .corel and .objectives import nothing beyond the standard library, torch and numpy."
    import subprocess, sys, textwrap
    code = textwrap.dedent("""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split('.')[0] in ('fastcore', 'fastai', 'pytorch_metric_learning', 'sklearn', 'matplotlib', 'pandas', 'scipy'):
                    raise ImportError('blocked ' + name)
        sys.meta_path.insert(0, Block())
        import silhouette_nb.heads, silhouette_nb.corel, silhouette_nb.objectives
        print('imported')""")
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and 'imported' in p.stdout, p.stderr[-2000:]
