"Tests of silhouette_nb.learner: gradients against a hand-written step, metrics against scikit-learn, fastai integration."
import copy, math, warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.metrics import accuracy_score, adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics import silhouette_score as sk_silhouette_score
from sklearn.neighbors import KNeighborsClassifier

with warnings.catch_warnings():   # fastai 2.8's imports warn about torch.jit.script, numpy and pandas deprecations
    warnings.simplefilter('ignore')
    from fastai.callback.core import Callback, CancelFitException
    from fastai.callback.fp16 import MixedPrecision
    from fastai.callback.training import GradientAccumulation
    from fastai.learner import load_learner
    from fastai.torch_core import set_seed

from silhouette_nb import data as sdata
from silhouette_nb.data import get_dls
from silhouette_nb.learner import (EmbeddingNet, FrozenEncoder, ObjectiveCallback, ObjectiveLoss, ViewsCrossEntropy, embedding_learner, evaluate, fit_objective, get_embeddings, linear_probe, supcon_two_stage)
from silhouette_nb.metrics import WholeSetMetric, knn_accuracy, whole_set_metrics
from silhouette_nb.encoders import make_encoder
from silhouette_nb.objectives import OBJECTIVES, make_objective, spec_requirements
from silhouette_nb.validation import count_syncs
from silhouette_nb.heads import LinearClassifier
from silhouette_nb.validation import set_default_validate_args


pytestmark = pytest.mark.usefixtures('one_thread')   # tests/conftest.py


@pytest.fixture(scope='module')
def dls():
    set_seed(0)
    return get_dls('digits', bs=64, device='cpu')


@pytest.fixture(scope='module')
def dls_views():
    set_seed(0)
    return get_dls('digits', bs=32, views=2, device='cpu')


class GrabStep(Callback):
    "Record every training batch; at the first optimiser step, copy the gradients and stop the fit."
    order = 100  # after GradientAccumulation's before_step, which cancels the steps it skips
    def before_fit(self): self.batches, self.grads = [], None
    def before_batch(self):
        if self.training: self.batches.append((self.xb[0].clone(), self.yb[0].clone()))
    def before_step(self):
        self.grads = [None if p.grad is None else p.grad.detach().clone() for p in self.model.parameters()]
        raise CancelFitException()


def _hand_grads(model, objective, batches):
    "Gradients of the mean of objective(model.embed(x), y)['loss'] over `batches`, in train mode."
    model.train()
    loss = sum(objective(model.embed(x), y)['loss'] for x, y in batches) / len(batches)
    loss.backward()
    return [None if p.grad is None else p.grad for p in model.parameters()]


def _assert_same_grads(ours, hand):
    assert len(ours) == len(hand)
    n_grads = 0
    for g, h in zip(ours, hand):
        assert (g is None) == (h is None)
        if g is not None: torch.testing.assert_close(g, h, rtol=1e-5, atol=1e-7); n_grads += 1
    assert n_grads > 0


@pytest.mark.parametrize('spec', OBJECTIVES)
def test_gradients_are_the_objectives(spec, dls, dls_views):
    "One fastai step back-propagates exactly objective(outputs, y)['loss'], head parameters included."
    d = dls_views if 'supcon' in spec else dls
    learn = embedding_learner(d, 'cnn', spec, seed=0, metrics=())
    model0, obj0 = copy.deepcopy((learn.model, learn.objective))   # one memo: the head stays shared
    assert model0.head is obj0.head
    grab = GrabStep()
    learn.fit(1, 1e-3, cbs=grab)
    assert len(grab.batches) == 1 and grab.grads is not None
    _assert_same_grads(grab.grads, _hand_grads(model0, obj0, grab.batches))
    if obj0.head is not None and list(obj0.head.parameters()):   # the head's parameters do get a gradient
        ids = {id(p) for p in learn.objective.head.parameters()}
        assert any(g is not None and g.abs().sum() > 0
                   for p, g in zip(learn.model.parameters(), grab.grads) if id(p) in ids)


def test_gradient_accumulation_composes(dls):
    "With GradientAccumulation(2 batches), the step's gradient is that of the mean objective over the two batches."
    learn = embedding_learner(dls, 'cnn', 'ce+sil', seed=0, metrics=())
    model0, obj0 = copy.deepcopy((learn.model, learn.objective))
    grab = GrabStep()
    learn.fit(1, 1e-3, cbs=[GradientAccumulation(2 * dls.bs), grab])
    assert len(grab.batches) == 2
    _assert_same_grads(grab.grads, _hand_grads(model0, obj0, grab.batches))


@pytest.mark.parametrize('spec', ['proxynca', 'ce+center', 'corel-gaussian', 'corel-cosine'])
def test_head_parameters_are_trained(spec, dls):
    "The objective's head lives in the model, so the optimiser holds its parameters and moves them."
    learn = embedding_learner(dls, 'cnn', spec, seed=0, metrics=())
    head = learn.objective.head
    assert learn.model.head is head and len(list(head.parameters())) > 0
    learn.create_opt()
    in_opt = {id(p) for pg in learn.opt.param_lists for p in pg}
    assert {id(p) for p in head.parameters()} <= in_opt
    before = [p.detach().clone() for p in head.parameters()]
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    assert any(not torch.equal(b, p) for b, p in zip(before, head.parameters()))


@pytest.fixture(scope='module')
def trained(dls):
    set_seed(0)
    learn = embedding_learner(dls, 'cnn', 'ce+sil', seed=0)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(3, 3e-3)
    learn.fit_table = list(learn.recorder.metric_names), [list(v) for v in learn.recorder.values]  # validate() resets them
    return learn


def _sklearn_metrics(e, y, logits, n_init=4, seed=0, k=5):
    e, y = e.double().numpy(), y.numpy()
    km = KMeans(len(np.unique(y)), n_init=n_init, random_state=seed).fit_predict(e)
    return {'top1': accuracy_score(y, logits.argmax(1).numpy()), 'silhouette': sk_silhouette_score(e, y),
            'knn': accuracy_score(y, KNeighborsClassifier(k).fit(e, y).predict(None)),
            'nmi': normalized_mutual_info_score(y, km), 'ari': adjusted_rand_score(y, km)}


@pytest.mark.parametrize('normalize', [True, False])
def test_metrics_equal_sklearn(trained, dls, normalize):
    "Whole-validation-set metrics equal scikit-learn's on the same embeddings (an independent pass over the data)."
    mets = trained.metrics
    trained.metrics = whole_set_metrics(normalize=normalize)
    try: ours = evaluate(trained)
    finally: trained.metrics = mets
    h, y = get_embeddings(trained)
    logits, _ = get_embeddings(trained, space='logits')
    theirs = _sklearn_metrics(F.normalize(h, dim=1) if normalize else h, y, logits)
    assert ours.keys() >= theirs.keys()
    for k, v in theirs.items():
        assert ours[k] == pytest.approx(v, abs=1e-4 if k == 'silhouette' else 1e-9), k
    assert ours['top1'] > 0.9


def test_metrics_do_not_depend_on_batch_size(trained, dls):
    "A whole-set metric is not a mean over batches: validating in batches of 64 or 7 gives the same numbers."
    a = evaluate(trained)
    b = evaluate(trained, dls.valid.new(bs=7))
    for k in ('top1', 'silhouette', 'knn', 'nmi', 'ari'): assert a[k] == pytest.approx(b[k], abs=1e-5), k
    assert a['ce'] == pytest.approx(b['ce'], rel=1e-4)     # the per-sample CE averages the same either way
    assert a['sil'] != pytest.approx(b['sil'], rel=1e-3)   # the batch-level term does not: it is a batch statistic


def test_knn_matches_sklearn_random():
    g = torch.Generator().manual_seed(1)
    for k in (1, 3, 10):
        y = torch.randint(0, 7, (300,), generator=g)
        x = torch.randn(300, 5, generator=g) + torch.randn(7, 5, generator=g)[y]
        theirs = accuracy_score(y.numpy(), KNeighborsClassifier(k).fit(x.double().numpy(), y.numpy()).predict(None))
        assert knn_accuracy(x.double(), y, k, chunk_size=64) == pytest.approx(theirs, abs=1e-12)


def test_terms_are_columns(trained):
    names, values = trained.fit_table
    assert names[1:-1] == ['train_loss', 'valid_loss', 'ce', 'sil', 'top1', 'silhouette', 'knn', 'nmi', 'ari', 'p_at_1', 'r_precision', 'map_at_r', 'spread', 'erank']
    assert len(values) == 3
    vals = dict(zip(names[1:-1], values[-1]))
    assert vals['valid_loss'] == pytest.approx(vals['ce'] + vals['sil'], rel=1e-5)


def test_get_preds(trained, dls):
    probs, targs = trained.get_preds()
    assert probs.shape == (len(dls.valid_ds), 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(len(probs)))
    logits, y = get_embeddings(trained, space='logits')
    torch.testing.assert_close(probs, logits.softmax(1), rtol=1e-5, atol=1e-6)
    probs2, _, losses = trained.get_preds(with_loss=True)   # per-sample CE: batch-level terms have no per-sample value
    torch.testing.assert_close(losses, F.cross_entropy(logits, y, reduction='none'), rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings('ignore:load_learner')   # fastai's reminder that pickle can run code: these files are ours
def test_export_load_round_trip(trained, dls, tmp_path):
    "export / load_learner: same predictions, same metrics; nothing in the learner needs a lambda."
    for learn in (trained, embedding_learner(dls, 'mlp', 'proxynca', seed=0), linear_probe(trained)):
        learn.export(tmp_path/'l.pkl')
        loaded = load_learner(tmp_path/'l.pkl')
        assert isinstance(loaded.loss_func, ViewsCrossEntropy)
        assert any(isinstance(cb, ObjectiveLoss) for cb in loaded.cbs)
        assert loaded.objective is loaded.objective_loss.objective
        torch.testing.assert_close(loaded.get_preds(dl=dls.valid)[0], learn.get_preds(dl=dls.valid)[0], rtol=0, atol=0)
        assert evaluate(loaded, dls.valid) == evaluate(learn)
        assert loaded.model.outputs is None
    evaluate(trained)
    store = next(m.store for m in trained.metrics if isinstance(m, WholeSetMetric))
    assert len(store.embs) > 0                       # the store holds the last validation pass...
    trained.export(tmp_path/'t.pkl')
    loaded = load_learner(tmp_path/'t.pkl')
    assert next(m.store for m in loaded.metrics if isinstance(m, WholeSetMetric)).embs == []   # ...but does not export it
    assert len(store.embs) > 0


@pytest.mark.filterwarnings('ignore:numpy.core is deprecated')   # raised inside fastai's Learner.load
def test_lr_find_runs(dls, tmp_path):
    learn = embedding_learner(dls, 'cnn', 'ce+sil', seed=0, path=tmp_path)   # lr_find saves the weights under path
    w0 = [p.detach().clone() for p in learn.model.parameters()]
    with learn.no_bar(): sug = learn.lr_find(num_it=30, show_plot=False)
    assert math.isfinite(sug.valley) and 1e-7 < sug.valley < 10
    assert len(learn.recorder.losses) > 5 and all(math.isfinite(float(l)) for l in learn.recorder.losses[:5])
    for a, b in zip(w0, learn.model.parameters()): assert torch.equal(a, b)   # lr_find restores the weights


def test_mixed_precision_composes_on_cpu(dls):
    "fastai's MixedPrecision (a CUDA callback) still composes with the objective on a CPU: it trains."
    learn = embedding_learner(dls, 'cnn', 'ce+sil', seed=0)
    with warnings.catch_warnings(), learn.no_bar(), learn.no_logging():
        warnings.simplefilter('ignore')   # "CUDA is not available: disabling autocast / GradScaler"
        learn.fit_one_cycle(2, 3e-3, cbs=MixedPrecision())
    assert evaluate(learn)['top1'] > 0.8


class CPUAutocast(Callback):
    "MixedPrecision's autocast region, on the CPU in bfloat16: forward pass, fastai's loss and the objective (inside it)."
    order = MixedPrecision.order
    def before_batch(self): self.ac = torch.autocast('cpu', dtype=torch.bfloat16); self.ac.__enter__()
    def after_pred(self): self.dtypes = {k: v.dtype for k, v in self.learn.model.outputs.items()} if self.learn.model.outputs else None
    def after_loss(self): self.ac.__exit__(None, None, None)


def test_half_precision_outputs_give_float32_objective(dls):
    learn = embedding_learner(dls, 'cnn', 'ce+sil', seed=0)
    seen = {}
    class Peek(Callback):
        order = ObjectiveLoss.order - 1   # before ObjectiveLoss takes the outputs from the model
        def after_pred(self): seen.update({k: v.dtype for k, v in self.learn.model.outputs.items()})
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(3, 3e-3, cbs=[CPUAutocast(), Peek()])
    assert seen['features'] == torch.bfloat16                  # the model did run in half precision...
    assert seen['logits'] == torch.float32                     # ...and its classifier, a head, in float32
    assert learn.objective_loss.terms['loss'].dtype == torch.float32 and math.isfinite(learn.objective_loss.terms['loss'])
    assert evaluate(learn)['top1'] > 0.85


def test_bad_batch_fails_before_training(tmp_path):
    "SupCon on one view with all labels of a batch distinct: ValueError before the first step, also in lr_find."
    set_seed(0)
    d = get_dls('digits', bs=8, balanced=1, device='cpu')
    learn = embedding_learner(d, 'cnn', 'supcon', seed=0, path=tmp_path)
    w0 = [p.detach().clone() for p in learn.model.parameters()]
    for go in (lambda: learn.fit(1), lambda: learn.lr_find(num_it=5, show_plot=False)):
        with pytest.raises(ValueError, match='views=2'): go()
        for a, b in zip(w0, learn.model.parameters()): assert torch.equal(a, b)
    # the same objective with two views of every sample trains
    dv = get_dls('digits', bs=8, balanced=1, views=2, device='cpu')
    ok = embedding_learner(dv, 'cnn', 'supcon', seed=0, metrics=())
    with ok.no_bar(), ok.no_logging(): ok.fit(1)
    assert math.isfinite(ok.recorder.values[-1][0])


def test_model_needs_to_leave_outputs(dls):
    from fastai.learner import Learner
    learn = Learner(dls, make_encoder('mlp', (1, 8, 8), widths=(10,)), loss_func=ViewsCrossEntropy(),
                    cbs=ObjectiveLoss(make_objective('ce', 10, 10)))
    with pytest.raises(ValueError, match='model.outputs'), learn.no_bar(), learn.no_logging(): learn.fit(1)


def test_objective_instance_must_fit(dls):
    with pytest.raises(ValueError, match='n_classes=5'):
        embedding_learner(dls, 'cnn', make_objective('ce+sil', 5, 128))
    learn = embedding_learner(dls, 'cnn', make_objective('ce+sil', 10, 16), dim=16)
    assert learn.model.projection[-1].out_features == 16


def test_views_model_and_loss():
    torch.manual_seed(0)
    net = EmbeddingNet(make_encoder('cnn', (1, 8, 8)), 10, dim=8, sample_ndim=3).eval()
    x, y = torch.randn(5, 3, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4])
    out = net.embed(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {'embedding': (5, 3, 128), 'features': (5, 3, 8), 'logits': (5, 3, 10)}
    torch.testing.assert_close(out['logits'][:, 2], net(x[:, 2]))
    ce = ViewsCrossEntropy()(out['logits'], y)
    torch.testing.assert_close(ce, F.cross_entropy(out['logits'].flatten(0, 1), y.repeat_interleave(3)))
    per = ViewsCrossEntropy('none')(out['logits'], y)
    assert per.shape == (15,)
    net(x)                                      # leaves the batch's outputs in net.outputs...
    assert net.outputs is not None and copy.deepcopy(net).outputs is None   # ...which a copy drops


def test_supcon_two_stage(dls_views):
    set_seed(0)
    probe = supcon_two_stage(dls_views, 'cnn', epochs=3, lr=3e-3, probe_epochs=2, seed=0, quiet=True)
    names = [m.name for m in probe.metrics]
    assert names == ['ce', 'top1', 'silhouette', 'knn', 'nmi', 'ari', 'p_at_1', 'r_precision', 'map_at_r', 'spread', 'erank']
    assert probe.pretrain_log['names'][:3] == ['train_loss', 'valid_loss', 'supcon'] and len(probe.pretrain_log['values']) == 3
    assert isinstance(probe.model.encoder, FrozenEncoder) and probe.model.classifier is not None
    assert not any(p.requires_grad for p in probe.model.encoder.parameters())
    enc = probe.model.encoder.encoder
    state = copy.deepcopy(enc.state_dict())   # weights and batch-norm statistics
    with probe.no_bar(), probe.no_logging(): probe.fit(1, 1e-2)
    for k, v in enc.state_dict().items(): assert torch.equal(v, state[k]), k
    assert evaluate(probe)['top1'] > 0.7


# ------------------------------------------------------------------ the objective on the learner, options, heads, syncs
def test_objective_loss_and_the_objective_on_the_learner(dls):
    learn = embedding_learner(dls, 'mlp', 'ce+sil', seed=0, metrics=())
    assert isinstance(learn.objective_loss, ObjectiveLoss) and learn.objective is learn.objective_loss.objective
    assert learn.objective.gather is False
    with pytest.warns(DeprecationWarning, match='use ObjectiveLoss'): old = ObjectiveCallback(make_objective('ce', 10, 10))
    from fastai.learner import Learner
    net = EmbeddingNet(make_encoder('mlp', (1, 8, 8), widths=(10,)), 10)
    l2 = Learner(dls, net, loss_func=ViewsCrossEntropy(), cbs=old)
    assert l2.objective_loss is old and l2.objective is old.objective        # the old name reads the new way
    l3 = Learner(dls, EmbeddingNet(make_encoder('mlp', (1, 8, 8), widths=(10,)), 10), loss_func=ViewsCrossEntropy())
    cb = ObjectiveLoss(make_objective('ce', 10, 10))
    with l3.no_bar(), l3.no_logging(): l3.fit(1, 1e-3, cbs=cb)                 # added for one fit only
    assert l3.objective is cb.objective


def test_embedding_learner_forwards_the_objective_options(dls):
    import inspect
    params = inspect.signature(embedding_learner).parameters
    assert {'sil_weight', 'center_weight', 'supcon_weight', 'sil_temperature', 'corel_attraction', 'validate_args'} <= set(params)
    assert 'lam' not in params and 'mu' not in params and 'gather' not in params
    learn = embedding_learner(dls, 'mlp', 'ce+sil+supcon', seed=0, metrics=(), sil_weight=0.3, supcon_weight=0.2,
                              sil_temperature=0.05, wd=0.123)
    assert learn.objective.weights == {'ce': 1., 'sil': 0.3, 'supcon': 0.2} and learn.objective.sil.temperature == 0.05
    assert learn.wd == 0.123                                                       # the rest goes to the Learner
    with pytest.warns(DeprecationWarning, match='`lam` is deprecated'):
        old = embedding_learner(dls, 'mlp', 'ce+center', seed=0, metrics=(), lam=0.5)
    assert old.objective.weights == {'ce': 1., 'center': 0.5}
    assert embedding_learner(dls, 'mlp', 'ce+center', seed=0, metrics=()).objective.weights == {'ce': 1., 'center': 0.01}
    for fn in (supcon_two_stage, fit_objective):
        assert 'sil_temperature' in inspect.signature(fn).parameters and 'supcon_temperature' in inspect.signature(fn).parameters


@pytest.mark.parametrize('spec', OBJECTIVES)
def test_the_model_asks_the_objective_where_logits_come_from(spec, dls):
    learn = embedding_learner(dls, 'mlp', spec, seed=0, metrics=())
    model, need = learn.model, spec_requirements(spec)
    assert model.head is learn.objective.head
    assert (model.classifier is None) == (need['head'] and not need['logits'])    # proxynca, corel-*: the head's logits
    x = dls.one_batch()[0][:6]
    logits = model.eval().embed(x)['logits']
    head = model.classifier if model.classifier is not None else model.head
    torch.testing.assert_close(logits, head.logits(model.embed(x)['embedding' if model.classifier is not None else 'features']))
    if model.classifier is not None: assert isinstance(model.classifier, LinearClassifier)


def test_classifier_weights_unchanged_by_the_head_interface(dls):
    "The linear classifier draws the same initial weights as the nn.Linear it replaces: same seed, same model."
    learn = embedding_learner(dls, 'mlp', 'ce', seed=0, metrics=())
    torch.manual_seed(0)
    enc = make_encoder('mlp', (1, 8, 8))
    ref = torch.nn.Linear(enc.out_features, 10)
    assert torch.equal(learn.model.classifier.weight, ref.weight) and torch.equal(learn.model.classifier.bias, ref.bias)


@pytest.fixture
def validation_off():
    set_default_validate_args(False)
    yield
    set_default_validate_args(True)


@pytest.mark.parametrize('spec', ['ce', 'ce+center', 'proxynca', 'corel-gaussian', 'corel-cosine'])
def test_model_and_objective_step_has_no_host_sync(spec, dls, validation_off):
    "The model's forward (heads' logits included) and the objective's forward and backward: no sync with validation off."
    learn = embedding_learner(dls, 'mlp', spec, seed=0, metrics=(), validate_args=False)
    x, y = dls.one_batch()
    with count_syncs() as n:
        learn.objective(learn.model.embed(x), y)['loss'].backward()
    assert sum(n.values()) == 0, dict(n)


@pytest.mark.parametrize('spec', ['proxynca', 'corel-gaussian', 'ce+center', 'ce+sil+supcon'])
def test_fastai_training_under_cpu_autocast(spec):
    "The whole fastai step inside bfloat16 autocast, the objective included (ObjectiveLoss no longer switches it off)."
    set_seed(0)
    d = get_dls('digits', bs=32, n_train=128, n_valid=64, views=2 if 'supcon' in spec else 1, device='cpu')
    learn = embedding_learner(d, 'mlp', spec, seed=0, metrics=())
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=CPUAutocast())
    terms = learn.objective_loss.terms
    assert terms['loss'].dtype == torch.float32 and all(math.isfinite(float(v)) for v in terms.values())
    assert math.isfinite(learn.recorder.values[-1][0])


def test_fit_objective_two_stage_comes_from_the_requirements(dls_views):
    set_seed(0)
    d = get_dls('digits', bs=32, n_train=96, n_valid=64, views=2, device='cpu')
    probe = fit_objective(d, 'mlp', make_objective('supcon', 10, 32, supcon_temperature=0.2), epochs=1, probe_epochs=1, dim=32,
                          seed=0, quiet=True)
    assert probe.pretrain_log['names'][:3] == ['train_loss', 'valid_loss', 'supcon'] and probe.objective.spec == 'ce'
