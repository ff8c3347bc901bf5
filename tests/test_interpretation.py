"""Any fastai data in, fastai inference out (issue 12, item 6): plain `TensorDataset` DataLoaders and any encoder in
`embedding_learner`, `n_classes=`, `predict`, `test_dl` + `get_preds`, `show_batch` / `show_results`, fastai's
`ClassificationInterpretation` — live and after `export` / `load_learner` — and `EmbeddingInterpretation` checked
against scikit-learn."""
import math, random, warnings

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.decomposition import PCA
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import silhouette_samples as sk_silhouette_samples
from sklearn.metrics import silhouette_score as sk_silhouette_score
from torch.utils.data import TensorDataset

with warnings.catch_warnings():   # fastai 2.8's imports warn about torch.jit.script, numpy and pandas deprecations
    warnings.simplefilter('ignore')
    from fastai.data.core import DataLoaders, Datasets
    from fastai.data.transforms import Categorize
    from fastai.interpret import ClassificationInterpretation
    from fastai.learner import load_learner
    from fastai.torch_core import set_seed

from silhouette_nb.data import get_dls
from silhouette_nb.encoders import make_encoder
from silhouette_nb.learner import embedding_learner, evaluate, get_embeddings

pytestmark = [pytest.mark.filterwarnings('ignore:load_learner'), pytest.mark.usefixtures('one_thread')]   # fastai's reminder that pickle runs code: the files are ours




@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close('all')


def signals(n=160, shape=(3, 16), k=4, seed=0, labels=True):
    "Fresh `DataLoaders.from_dsets` of plain `TensorDataset`s: a pattern per class plus noise, 3/4 train, 1/4 valid."
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = torch.randn(k, *shape, generator=g)[y] + 0.5 * torch.randn(n, *shape, generator=g)
    cut = 3 * n // 4
    sets = [TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])] if labels else \
           [TensorDataset(x[:cut]), TensorDataset(x[cut:])]
    return DataLoaders.from_dsets(*sets, bs=16, device='cpu'), x, y


def flat_encoder(d_in, d=24):
    "A PyTorch encoder that does not say its output size."
    return nn.Sequential(nn.Flatten(), nn.Linear(d_in, d), nn.ReLU())


def fit(learn, epochs=1, lr=3e-3):
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, lr)
    return learn


def reload(learn, tmp_path, name='l.pkl'):
    learn.export(tmp_path/name)
    return load_learner(tmp_path/name)


@pytest.fixture(scope='module')
def digits_learner():
    set_seed(0)
    dls = get_dls('digits', bs=64, device='cpu')
    return fit(embedding_learner(dls, 'cnn', 'ce+sil', seed=0), 2), dls


@pytest.fixture(scope='module')
def signal_learner():
    dls, x, y = signals()
    return fit(embedding_learner(dls, flat_encoder(48), 'ce+sil', seed=0), 3, 1e-2), x, y


# ------------------------------------------------------------------ plain fastai data and any encoder in
def test_plain_tensor_datasets_train():
    "DataLoaders.from_dsets(TensorDataset, TensorDataset) with a module encoder: K from the labels, trains."
    dls, x, y = signals()
    learn = embedding_learner(dls, make_encoder('mlp', (3, 16)), 'ce+sil', seed=0)
    assert list(learn.dls.vocab) == ['0', '1', '2', '3'] and learn.model.classifier.weight.shape[0] == 4
    fit(learn, 2, 1e-2)
    assert all(math.isfinite(float(v)) for v in learn.recorder.values[-1][:2])
    assert evaluate(learn)['top1'] > 0.9


def test_any_encoder_module_its_size_measured():
    "An encoder without `out_features`: d_h from one input, in eval mode, leaving its modes and statistics alone."
    dls, x, y = signals()
    enc = nn.Sequential(nn.Flatten(), nn.Linear(48, 20), nn.BatchNorm1d(20), nn.ReLU())
    stats = enc[2].running_mean.clone()
    enc[2].eval()                          # a mixed-mode module keeps its modes
    learn = embedding_learner(dls, enc, 'ce+sil', seed=0)
    assert learn.model.d_h == 20 and learn.model.classifier.weight.shape == (4, 20)
    assert enc[0].training and not enc[2].training and torch.equal(enc[2].running_mean, stats)
    with pytest.raises(ValueError, match='nn.Flatten'): embedding_learner(dls, nn.Conv1d(3, 8, 3), 'ce')
    fit(learn)
    assert math.isfinite(float(learn.recorder.values[-1][0]))


def test_linear_probe_of_an_encoder_without_size(signal_learner):
    "The frozen copy of an encoder without `out_features` is measured the same way: the probe trains on its 24-d embedding."
    from silhouette_nb.learner import FrozenEncoder, linear_probe
    learn, x, y = signal_learner
    probe = fit(linear_probe(learn, seed=0), 1, 1e-2)
    assert isinstance(probe.model.encoder, FrozenEncoder) and probe.model.d_h == 24 and probe.dls is learn.dls
    assert evaluate(probe)['top1'] > 0.5


def test_encoder_without_size_on_empty_data_says_what_to_give():
    dls, x, y = signals()
    empty = DataLoaders.from_dsets(TensorDataset(x[:0], y[:0]), TensorDataset(x[:0], y[:0]), bs=16, device='cpu')
    with pytest.raises(ValueError, match='out_features'): embedding_learner(empty, flat_encoder(48), 'ce', n_classes=4)
    with pytest.raises(ValueError, match='datasets are empty'): embedding_learner(empty, 'mlp', 'ce', n_classes=4)


def test_n_classes():
    "n_classes= adds classes the training set lacks, is checked against the data, and is needed without integer labels."
    dls, x, y = signals()
    assert embedding_learner(dls, flat_encoder(48), 'ce', n_classes=6).model.classifier.weight.shape[0] == 6
    dls, x, y = signals()
    with pytest.raises(ValueError, match='labels go up to 3'): embedding_learner(dls, flat_encoder(48), 'ce', n_classes=3)
    with pytest.raises(ValueError, match='n_classes=5 but the data has 10 classes'):
        embedding_learner(get_dls('digits', n_train=100, n_valid=50, device='cpu'), 'mlp', 'ce', n_classes=5)
    with pytest.raises(ValueError, match='pass n_classes='): embedding_learner(signals(labels=False)[0], flat_encoder(48), 'ce')
    floats = DataLoaders.from_dsets(TensorDataset(x[:100], y[:100].float()), TensorDataset(x[100:], y[100:].float()), bs=16, device='cpu')
    with pytest.raises(ValueError, match='pass n_classes='): embedding_learner(floats, flat_encoder(48), 'ce')
    with pytest.raises(ValueError, match='prepared for 4 classes'):   # loaders are prepared in place, once
        prepared, _, _ = signals(); embedding_learner(prepared, flat_encoder(48), 'ce'); embedding_learner(prepared, flat_encoder(48), 'ce', n_classes=5)
    with pytest.raises(ValueError, match='class indices'):
        neg = DataLoaders.from_dsets(TensorDataset(x[:100], y[:100] - 1), TensorDataset(x[100:], y[100:]), bs=16, device='cpu')
        embedding_learner(neg, flat_encoder(48), 'ce')


def test_preparing_the_data_changes_no_batch_and_draws_no_random_number():
    "Same seed, same batches (shuffled, augmented, two views, class-balanced) with and without the learner; no RNG used."
    def batches(make_learner):
        set_seed(0)
        dls = get_dls('digits', bs=32, n_train=256, n_valid=64, views=2, balanced=4, device='cpu')
        if make_learner:
            states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
            learn = embedding_learner(dls, 'mlp', 'ce+sil+supcon', seed=0)
            assert torch.equal(states[0], torch.get_rng_state()) and states[1] == random.getstate()
            assert np.array_equal(states[2], np.random.get_state()[1])
            dls = learn.dls
        return [b for _ in range(2) for b in dls.train] + [b for b in dls.valid]
    for a, b in zip(batches(False), batches(True), strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


# ------------------------------------------------------------------ fastai inference out, live and after export
def learner_and_items(request, which, n, labelled=False):
    "The digits or the signals learner, and `n` validation items: inputs, or (input, label) pairs."
    if which == 'digits':
        learn, dls = request.getfixturevalue('digits_learner')
        items = [dls.valid_ds[i] for i in range(n)]
    else:
        learn, x, y = request.getfixturevalue('signal_learner')
        items = list(zip(x[120:120 + n], y[120:120 + n]))
    return learn, items if labelled else [x for x, _ in items]


@pytest.mark.parametrize('which', ['digits', 'signals'])
def test_predict(which, request, tmp_path):
    "predict: the decoded class, its index and the probabilities (as fastai's), also after load_learner."
    learn, items = learner_and_items(request, which, 5)
    loaded = reload(learn, tmp_path)
    for l in (learn, loaded):
        for item in items:
            with l.no_bar(): name, idx, probs = l.predict(item)
            with torch.no_grad(): ref = learn.model.eval().embed(item[None])['logits'].softmax(1)[0]
            torch.testing.assert_close(probs, ref, rtol=1e-5, atol=1e-6)
            assert int(idx) == int(probs.argmax()) and isinstance(name, str) and name == learn.dls.vocab[int(idx)]


@pytest.mark.parametrize('which', ['digits', 'signals'])
def test_test_dl_get_preds_unlabelled(which, request, tmp_path):
    "test_dl of unlabelled items + get_preds after load_learner: the live learner's probabilities, no targets."
    learn, items = learner_and_items(request, which, 40)
    if which == 'signals': items = torch.stack(items)          # a tensor of items works too
    loaded = reload(learn, tmp_path)
    with learn.no_bar(), loaded.no_bar():
        live, t_live = learn.get_preds(dl=learn.dls.test_dl(items))
        dec_probs, targs, dec = loaded.get_preds(dl=loaded.dls.test_dl(items, bs=7), with_decoded=True)
    assert targs is None and t_live is None and dec_probs.shape == (40, len(learn.dls.vocab))
    torch.testing.assert_close(dec_probs, live, rtol=1e-5, atol=1e-6)
    assert torch.equal(dec, dec_probs.argmax(1))
    out, labels = get_embeddings(loaded, loaded.dls.test_dl(items))
    assert labels is None and out.shape == (40, learn.model.d_h)


def test_test_dl_with_labels(digits_learner, tmp_path):
    learn, dls = digits_learner
    loaded = reload(learn, tmp_path)
    items = [dls.valid_ds[i] for i in range(30)]
    with loaded.no_bar(): probs, targs = loaded.get_preds(dl=loaded.dls.test_dl(items, with_labels=True))
    assert torch.equal(targs, torch.stack([y for _, y in items]))
    with loaded.no_bar(): assert loaded.get_preds(dl=loaded.dls.test_dl(items))[1] is None   # labels dropped by default


def _titles(fig): return [ax.get_title() for ax in fig.axes if ax.get_title()]


@pytest.mark.parametrize('shape,kind', [((1, 8, 8), 'image'), ((3, 12, 12), 'image'), ((3, 16), 'lines'), ((10,), 'lines')])
def test_show_batch_and_show_results(shape, kind):
    "Images shown as images, signals and tabular rows as lines, on a grid titled with the class names."
    dls, x, y = signals(shape=shape)
    learn = embedding_learner(dls, flat_encoder(int(np.prod(shape))), 'ce', seed=0)
    learn.dls.show_batch(max_n=6)
    fig = plt.gcf()
    titles = _titles(fig)
    assert len(titles) == 6 and set(titles) <= set(learn.dls.vocab)
    drawn = [ax for ax in fig.axes if ax.get_title()]
    assert all((len(ax.images) == 1) == (kind == 'image') and (len(ax.lines) > 0) == (kind == 'lines') for ax in drawn)
    plt.close('all')
    with learn.no_bar(): learn.show_results(max_n=4, shuffle=False)
    fig = plt.gcf()
    results = [ax for ax in fig.axes if ax.get_title()]
    assert len(results) == 4
    with learn.no_bar(): preds = learn.get_preds(dl=learn.dls.valid.new(shuffle=False), with_decoded=True)[2][:4]
    for ax, yt, p in zip(results, y[120:124], preds):
        target, pred = ax.get_title().split('\n')
        assert (target, pred) == (str(int(yt)), str(int(p)))
        assert ax.title.get_color() == ('green' if int(yt) == int(p) else 'red')
    plt.close('all')
    learn.dls.test_dl(x[:5]).show_batch(max_n=5)   # unlabelled: inputs only, no titles
    assert len([ax for ax in plt.gcf().axes if ax.has_data()]) == 5 and not _titles(plt.gcf())


def test_show_after_load_learner(digits_learner, tmp_path):
    learn, dls = digits_learner
    loaded = reload(learn, tmp_path)
    loaded.dls.test_dl([dls.valid_ds[i] for i in range(4)], with_labels=True).show_batch(max_n=4)
    assert _titles(plt.gcf()) == [dls.vocab[int(dls.valid_ds[i][1])] for i in range(4)]


@pytest.mark.parametrize('which', ['digits', 'signals'])
def test_classification_interpretation_is_k_by_k(which, request, tmp_path):
    "fastai's ClassificationInterpretation: a K x K matrix with the class names, live and after load_learner."
    learn, items = learner_and_items(request, which, 359 if which == 'digits' else 40, labelled=True)
    K = len(learn.dls.vocab)
    with learn.no_bar():
        interp = ClassificationInterpretation.from_learner(learn)
        cm = interp.confusion_matrix()
        probs, targs = learn.get_preds()
    assert cm.shape == (K, K) and cm.sum() == len(targs)
    assert np.array_equal(cm, sk_confusion_matrix(targs.numpy(), probs.argmax(1).numpy(), labels=range(K)))
    with learn.no_bar(): interp.plot_confusion_matrix()
    assert [t.get_text() for t in plt.gca().get_xticklabels()] == list(learn.dls.vocab)
    assert interp.most_confused(1) == sorted(interp.most_confused(1), key=lambda o: -o[2])
    loaded = reload(learn, tmp_path)
    with loaded.no_bar():
        again = ClassificationInterpretation.from_learner(loaded, dl=loaded.dls.test_dl(items, with_labels=True))
        assert np.array_equal(again.confusion_matrix(), cm)


def test_export_keeps_the_class_names_and_no_data(signal_learner, tmp_path):
    learn, x, y = signal_learner
    loaded = reload(learn, tmp_path)
    assert list(loaded.dls.vocab) == list(learn.dls.vocab) and len(loaded.dls.train_ds) == 0 and len(loaded.dls.valid_ds) == 0
    assert len(learn.dls.train_ds) == 120                      # the learner's own data is untouched by export


def test_fastai_datasets_come_back_unchanged():
    "DataLoaders of fastai's own Datasets decode themselves: classification_dls leaves them, class_names reads their vocab."
    from silhouette_nb.learner import class_names, classification_dls
    dsets = Datasets(list(range(40)), [[_input], [_label, Categorize()]], splits=[list(range(30)), list(range(30, 40))])
    dls = dsets.dataloaders(bs=8, device='cpu')
    assert classification_dls(dls) is dls and class_names(dls) == ['a', 'b']


_X = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
def _input(i): return _X[i]
def _label(i): return 'ab'[i % 2]


# ------------------------------------------------------------------ EmbeddingInterpretation against scikit-learn
@pytest.fixture(scope='module')
def interp(digits_learner):
    from silhouette_nb.interpretation import EmbeddingInterpretation
    return EmbeddingInterpretation.from_learner(digits_learner[0])


def test_interpretation_holds_the_validation_set(interp, digits_learner):
    learn, dls = digits_learner
    h, y = get_embeddings(learn)
    torch.testing.assert_close(interp.embeddings, F.normalize(h, dim=1))
    assert torch.equal(interp.labels, y) and interp.vocab == list(dls.vocab)
    logits, _ = get_embeddings(learn, space='logits')
    assert torch.equal(interp.preds, logits.argmax(1))


def test_silhouettes_equal_sklearn(interp, digits_learner):
    e, y = interp.embeddings.double().numpy(), interp.labels.numpy()
    np.testing.assert_allclose(interp.silhouettes.numpy(), sk_silhouette_samples(e, y), atol=2e-5)
    assert interp.silhouettes.mean().item() == pytest.approx(evaluate(digits_learner[0])['silhouette'], abs=1e-6)


def test_pair_silhouettes_equal_sklearn_on_each_pair(interp):
    "S(a, b) is the silhouette coefficient of the two classes alone, for all 45 pairs."
    S, e, y = interp.pair_silhouettes(), interp.embeddings.double().numpy(), interp.labels.numpy()
    for a in range(10):
        assert math.isnan(S[a, a])
        for b in range(a + 1, 10):
            keep = (y == a) | (y == b)
            ref = sk_silhouette_score(e[keep], y[keep])
            assert S[a, b].item() == pytest.approx(ref, abs=2e-5) and S[b, a] == S[a, b]


def test_most_overlapping_is_the_lowest_pairs(interp):
    S = interp.pair_silhouettes()
    pairs = sorted((S[a, b].item(), str(a), str(b)) for a in range(10) for b in range(a + 1, 10))
    got = interp.most_overlapping(7)
    assert [(a, b) for a, b, _ in got] == [(a, b) for _, a, b in pairs[:7]]
    assert [s for _, _, s in got] == pytest.approx([s for s, _, _ in pairs[:7]])
    assert len(interp.most_overlapping(100)) == 45
    with pytest.raises(ValueError, match='positive int'): interp.most_overlapping(0)


def test_pair_silhouettes_with_absent_classes_and_a_singleton():
    "Classes absent from the set give NaN rows; a singleton counts 0, as in the silhouette and in scikit-learn."
    from silhouette_nb.interpretation import EmbeddingInterpretation
    g = torch.Generator().manual_seed(3)
    y = torch.tensor([0] * 12 + [2] * 9 + [4] + [5] * 7)
    e = (torch.randn(6, 5, generator=g)[y] * 2 + torch.randn(len(y), 5, generator=g)).double()
    it = EmbeddingInterpretation(e, y, y, [f'c{i}' for i in range(6)])
    S = it.pair_silhouettes()
    assert S[1].isnan().all() and S[:, 3].isnan().all()
    for a, b in [(0, 2), (0, 4), (2, 5), (4, 5)]:
        keep = ((y == a) | (y == b)).numpy()
        assert S[a, b].item() == pytest.approx(sk_silhouette_score(e.numpy()[keep], y.numpy()[keep]), abs=1e-10)
    np.testing.assert_allclose(it.silhouettes.numpy(), sk_silhouette_samples(e.numpy(), y.numpy()), atol=1e-10)
    assert {p[:2] for p in it.most_overlapping(100)} == {(f'c{a}', f'c{b}') for a, b in [(0, 2), (0, 4), (0, 5), (2, 4), (2, 5), (4, 5)]}


def test_projection_is_pca(interp):
    p = interp.projection().numpy()
    ref = PCA(2, svd_solver='full').fit_transform(interp.embeddings.double().numpy())
    np.testing.assert_allclose(np.abs(p), np.abs(ref), atol=1e-8)
    for j in range(2):   # the same axes up to sign, and ours signed by the largest loading
        assert abs(np.corrcoef(p[:, j], ref[:, j])[0, 1]) == pytest.approx(1, abs=1e-10)
    t = interp.projection('tsne')
    assert t.shape == (len(interp.labels), 2) and torch.equal(t, interp.projection('tsne'))
    with pytest.raises(ValueError, match="unknown method 'umap'"): interp.projection('umap')


def test_confusion_matrix(interp, digits_learner):
    cm = interp.confusion_matrix()
    assert np.array_equal(cm.numpy(), sk_confusion_matrix(interp.labels.numpy(), interp.preds.numpy(), labels=range(10)))
    with digits_learner[0].no_bar(): assert np.array_equal(cm.numpy(), ClassificationInterpretation.from_learner(digits_learner[0]).confusion_matrix())
    ax = interp.plot_confusion_matrix(normalize=True)
    assert [t.get_text() for t in ax.get_xticklabels()] == interp.vocab == [t.get_text() for t in ax.get_yticklabels()]


def test_plots_show_the_class_names(interp):
    ax = interp.plot_silhouette()
    assert [t.get_text() for t in ax.get_yticklabels()] == interp.vocab
    red = [l for l in ax.lines if l.get_color() == 'red']
    assert len(red) == 1 and red[0].get_xdata()[0] == pytest.approx(interp.silhouettes.mean().item())
    ax = interp.plot_projection()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == interp.vocab


def test_interpretation_after_load_learner(interp, digits_learner, tmp_path):
    from silhouette_nb.interpretation import EmbeddingInterpretation
    learn, dls = digits_learner
    loaded = reload(learn, tmp_path)
    with pytest.raises(ValueError, match='pass dl='): EmbeddingInterpretation.from_learner(loaded)
    items = [dls.valid_ds[i] for i in range(len(dls.valid_ds))]
    again = EmbeddingInterpretation.from_learner(loaded, dl=loaded.dls.test_dl(items, with_labels=True))
    torch.testing.assert_close(again.embeddings, interp.embeddings, rtol=1e-5, atol=1e-6)
    assert again.vocab == interp.vocab and torch.equal(again.confusion_matrix(), interp.confusion_matrix())
    assert [p[:2] for p in again.most_overlapping(3)] == [p[:2] for p in interp.most_overlapping(3)]
    with pytest.raises(ValueError, match='no labels'): EmbeddingInterpretation.from_learner(loaded, dl=loaded.dls.test_dl([x for x, _ in items]))


def test_interpretation_module_names_its_extra():
    "Without fastai, importing the module says which extra installs it (as tests/test_light_install.py does for the others)."
    from test_light_install import run_light
    rc, out = run_light("""
        try: import silhouette_nb.interpretation
        except ImportError as e: print('ImportError:', e)
        else: print('imported')
    """)
    assert 'pip install "silhouette-nb[fastai]"' in out, out
