"The options the evidence suites rest on: the silhouette's variants, the weight's warm-up, fixed-step epochs, unseen classes, the collapse numbers."
import math
import pytest, torch
import torch.nn.functional as F
from silhouette_nb.distances import unit_rows
from silhouette_nb.silhouette import silhouette_score, soft_silhouette_loss, SoftSilhouetteLoss
from silhouette_nb.objectives import make_objective


def batch(seed, B=40, d=6, K=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(K).repeat(B // K)
    return torch.randn(B, d, generator=g, dtype=dtype) + 0.8 * torch.randn(K, d, generator=g, dtype=dtype)[y], y


@pytest.mark.parametrize('distance', ['euclidean', 'sqeuclidean', 'cosine'])
@pytest.mark.parametrize('chunk_size', [None, 7])
@pytest.mark.parametrize('n_classes', [None, 4])
def test_hard_minimum_is_one_minus_the_exact_silhouette(distance, chunk_size, n_classes):
    for seed in range(5):
        x, y = batch(seed)
        for normalize in (True, False):
            want = 1 - silhouette_score(unit_rows(x) if normalize else x, y, distance)
            got = soft_silhouette_loss(x, y, distance=distance, normalize=normalize, minimum='hard', chunk_size=chunk_size, n_classes=n_classes)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_hard_minimum_gradient_reaches_the_nearest_class_only():
    "b(i) = min_c m_i(c): a sample's b moves only with the members of its nearest other class (and a with its own)."
    x, y = batch(0, B=12, d=3, K=3)
    x = x.requires_grad_()
    from silhouette_nb.silhouette import _silhouettes
    s, _ = _silhouettes(x, y, 3, None, 'euclidean')
    s[0].backward()
    xd = x.detach()
    M = torch.stack([torch.cdist(xd[:1], xd[y == c]).sum() / (int((y == c).sum()) - int(c == y[0])) for c in range(3)])
    others = [c for c in range(3) if c != y[0]]
    far = max(others, key=lambda c: M[c].item())
    assert (x.grad[y == far] == 0).all() and (x.grad[y == min(others, key=lambda c: M[c].item())] != 0).any()


def test_soft_tends_to_hard_and_delta_floors_the_denominator():
    x, y = batch(1)
    hard = soft_silhouette_loss(x, y, minimum='hard')
    for t, tol in ((1e-3, 1e-2), (1e-5, 1e-4)):
        assert abs(soft_silhouette_loss(x, y, t) - hard) < tol
    tiny = x * 1e-7   # every distance far below delta
    assert abs(1 - soft_silhouette_loss(tiny, y, normalize=False, minimum='hard', delta=1e-4)) < 1e-2
    assert soft_silhouette_loss(tiny, y, normalize=False, minimum='hard', delta=0.) == soft_silhouette_loss(x, y, normalize=False, minimum='hard')


@pytest.mark.parametrize('k', [1e20, 1e-30, 3e37])
@pytest.mark.parametrize('chunk_size', [None, 8])
def test_silhouette_at_the_ends_of_float32(k, chunk_size):
    x, y = batch(2, dtype=torch.float32)
    for distance in ('euclidean', 'sqeuclidean', 'cosine'):
        torch.testing.assert_close(silhouette_score(x * k, y, distance, chunk_size=chunk_size), silhouette_score(x, y, distance, chunk_size=chunk_size), rtol=1e-5, atol=1e-6)
    e = (x * k).requires_grad_()
    loss = soft_silhouette_loss(e, y, normalize=False, chunk_size=chunk_size)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(e.grad).all() and (e.grad != 0).any()


def test_variant_options_are_checked_once_with_their_names():
    with pytest.raises(ValueError, match='unknown minimum'): SoftSilhouetteLoss(minimum='min')
    with pytest.raises(ValueError, match='delta'): soft_silhouette_loss(*batch(0), delta=float('nan'))
    with pytest.raises(ValueError, match='unknown sil_minimum'): make_objective('ce+sil', 4, 6, sil_minimum='min')
    with pytest.raises(ValueError, match='sil_delta'): make_objective('ce+sil', 4, 6, sil_delta=-1)
    with pytest.raises(TypeError, match='sil_normalize must be True or False'): make_objective('ce+sil', 4, 6, sil_normalize=1)


def test_warmup_ramps_the_weight_through_a_learner():
    "The learner sets the objective's progress before every training batch: the silhouette's weight rises from ~0 to sil_weight."
    from fastai.callback.core import Callback
    from silhouette_nb.data import get_dls
    from silhouette_nb.learner import embedding_learner
    class Watch(Callback):
        order = 100
        def before_fit(self): self.w = []
        def after_loss(self):
            if self.training: self.w.append(self.learn.objective.weight('sil'))
    dls = get_dls('digits', bs=64, device='cpu')
    watch = Watch()
    learn = embedding_learner(dls, 'mlp', 'ce+sil', sil_weight=0.5, sil_warmup=0.5, metrics=(), seed=0, cbs=[watch])
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-3)
    w = watch.w
    assert w[0] < 0.05 and all(a <= b for a, b in zip(w, w[1:])) and w[-1] == 0.5
    n_half = sum(v < 0.5 for v in w)
    assert abs(n_half - len(w) / 2) <= 1
    assert learn.objective.progress == 1.


def test_unseen_classes_and_fixed_steps_through_the_runner(tmp_path):
    "A seen_classes run: trained on classes 0-4, its row's test metrics are the other classes' (no top-1), every epoch records the collapse numbers."
    import json
    from silhouette_nb.config import RunConfig
    from silhouette_nb.runner import train_and_evaluate
    cfg = RunConfig(dataset='mnist1d', encoder='cnn', objective='ce+sil', epochs=2, bs=32, balanced=8, views=1, epoch_batches=3,
                    holdout=100, seen_classes=5, seed=0)
    m = train_and_evaluate(cfg, run_dir=tmp_path/'run', save_model='none')
    assert m['top1'] is None and 0 < m['valid_top1'] <= 1
    assert all(0 <= m[k] <= 1 for k in ('p_at_1', 'r_precision', 'map_at_r'))
    hist = [json.loads(l) for l in (tmp_path/'run'/'history.jsonl').read_text().splitlines()]
    assert len(hist) == 2 and all(h['spread'] > 0 and h['erank'] >= 1 for h in hist)
    assert RunConfig(dataset='mnist1d', holdout=100, seen_classes=5).key != RunConfig(dataset='mnist1d', holdout=100).key


def test_unseen_test_set_holds_only_unseen_classes():
    from silhouette_nb.data import get_dls
    seen = get_dls('fashion_mnist', holdout=500, seen_classes=5, n_valid=1000, device='cpu') if _fashion() else get_dls('mnist1d', holdout=100, seen_classes=5, device='cpu')
    full = get_dls(seen.train_ds.vocab and ('fashion_mnist' if _fashion() else 'mnist1d'), device='cpu')
    test = seen[2].dataset
    assert test.vocab == full.train_ds.vocab[5:] and seen.train_ds.vocab == full.train_ds.vocab[:5]
    assert set(test.targets.tolist()) == set(range(5)) and set(seen.train_ds.targets.tolist()) == set(range(5))


def _fashion():
    from silhouette_nb.data import FASHION_MNIST_DIR
    return FASHION_MNIST_DIR.exists()


def test_suite_variants_from_toml():
    from silhouette_nb.config import Suite
    s = Suite.from_toml('''
name = "v"
objectives = ["ce+sil"]
seeds = [0, 1]
[datasets.digits]
epochs = 1
[variants.a]
[variants.b]
sil_distance = "cosine"
[variants.c]
sil_weight = [0.5, 2.0]
''')
    cfgs = s.configs()
    assert len(cfgs) == 2 * (1 + 1 + 2)
    assert [(c.sil_distance, c.sil_weight) for c in cfgs[:4]] == [('euclidean', 1.), ('cosine', 1.), ('euclidean', .5), ('euclidean', 2.)]
    with pytest.raises((TypeError, ValueError), match='sil_distanse'): Suite.from_toml('objectives = ["ce"]\n[datasets.digits]\n[variants.a]\nsil_distanse = "cosine"\n').configs()


def test_collapse_numbers_of_a_cap_and_a_sphere():
    from silhouette_nb.metrics import spread, effective_rank, EmbeddingStore
    g = torch.Generator().manual_seed(0)
    sphere = F.normalize(torch.randn(500, 8, generator=g), dim=1)
    store = EmbeddingStore()
    store.add(sphere * 3, torch.arange(500) % 5)
    assert abs(store.compute('spread') - spread(sphere)) < 1e-6 and abs(store.compute('erank') - effective_rank(sphere)) < 1e-5   # the store normalises in float32
    assert math.isclose(spread(torch.zeros(10, 3)), 0.) and math.isnan(effective_rank(torch.zeros(10, 3)))
