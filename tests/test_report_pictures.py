"""The study pictures of `silhouette_nb.report` on hand-made rows and embeddings: the cases the notebook's demonstration
does not reach — one seed, unpaired seeds, several panels, a sweep with a missing cell, subsets — and one run of one
epoch with a held-out validation set, whose interpretation reads its test set."""
import json, math
from dataclasses import asdict
import numpy as np
import pytest
import torch
from PIL import Image
from silhouette_nb.config import RunConfig
from silhouette_nb.interpretation import EmbeddingInterpretation
from silhouette_nb.data import get_dls
from silhouette_nb.report import (select_rows, cost_gain, plot_cost_gain, sensitivity_grid, plot_sensitivity,
                                  plot_projections, plot_class_silhouettes, run_interpretation)
from silhouette_nb.runner import train_and_evaluate


def row(objective='ce', seed=0, top1=0.5, sec=1.0, dataset='digits', encoder='mlp', **settings):
    cfg = RunConfig(dataset, encoder, objective, seed=seed, **settings)
    return {'key': cfg.key, 'dataset': dataset, 'encoder': encoder, 'objective': objective, 'seed': seed, 'top1': top1,
            'silhouette': top1 / 2, 'sec_per_epoch': sec, 'config': asdict(cfg)}


def test_cost_gain_pairs_seeds_and_panels(tmp_path):
    rows = [row('ce', 0, 0.50, 1.0), row('ce', 1, 0.60, 3.0), row('ce', 2, 0.70, 2.0),
            row('ce+sil', 0, 0.55, 2.0), row('ce+sil', 1, 0.70, 4.0), row('ce+sil', 3, 0.99, 9.0),   # seed 3: no baseline
            row('ce+sil+supcon', 2, 0.80, 5.0),                                                        # one paired seed
            row('ce', 0, 0.40, 1.0, dataset='mnist1d'), row('ce+sil', 0, 0.45, 1.5, dataset='mnist1d')]
    cg = cost_gain(rows)
    d = np.array([0.05, 0.10])
    sil = cg[('digits', 'mlp')]['ce+sil']
    assert sil['n'] == 2 and sil['gain'] == pytest.approx(d.mean(), abs=1e-12)
    assert sil['half_width'] == pytest.approx(12.706204736174705 * d.std(ddof=1) / math.sqrt(2), rel=1e-9)   # t(0.975, 1)
    assert sil['cost'] == pytest.approx(3.0 / 2.0, abs=1e-12)   # seeds 0 and 1 only
    sup = cg[('digits', 'mlp')]['ce+sil+supcon']
    assert sup['n'] == 1 and math.isnan(sup['half_width']) and sup['cost'] == pytest.approx(2.5)
    assert cg[('mnist1d', 'mlp')]['ce+sil']['gain'] == pytest.approx(0.05)
    fig = plot_cost_gain(rows, fname=tmp_path/'cg.png')
    assert len(fig.axes) == 2
    desc = json.loads(Image.open(tmp_path/'cg.png').text['Description'])
    assert desc['points']['digits (mlp)']['ce+sil+supcon']['half_width'] is None
    with pytest.raises(ValueError, match='no rows to compare'): cost_gain(rows, dataset='cifar10')
    with pytest.raises(ValueError, match='metric'): cost_gain(rows, metric='accuracy')


def test_sensitivity_grid_missing_cell_and_mark(tmp_path):
    rows = [row('ce+sil', s, 0.5 + 0.1 * w + t + 0.01 * s, sil_weight=w, sil_temperature=t)
            for s in (0, 1) for w in (0.5, 1.0, 2.0) for t in (0.01, 0.1) if (w, t) != (2.0, 0.1)]
    rows.append(row('ce+sil', 2, 0.9, sil_weight=0.5, sil_temperature=0.01))
    xs, ys, mean, std, n = sensitivity_grid(rows)
    assert xs == [0.01, 0.1] and ys == [0.5, 1.0, 2.0]
    assert n.tolist() == [[3, 2], [2, 2], [2, 0]]
    assert math.isnan(mean[2, 1]) and math.isnan(std[2, 1])
    assert mean[1, 1] == pytest.approx(0.5 + 0.1 + 0.1 + 0.005, abs=1e-12)
    assert std[0, 0] == pytest.approx(np.std([0.56, 0.57, 0.9], ddof=1), abs=1e-12)
    fig = plot_sensitivity(rows, metrics=('top1',), mark=(0.1, 2.0), fname=tmp_path/'s.png')
    assert '–' in [t.get_text() for t in fig.axes[0].texts]
    assert json.loads(Image.open(tmp_path/'s.png').text['Description'])['grids']['top1']['n'][2] == [2, 0]
    with pytest.raises(ValueError, match='not a cell of the sweep'): plot_sensitivity(rows, mark=(1.0, 1.0))
    one = [row('ce+sil', s, sil_weight=1.0, sil_temperature=t) for s in (0, 1) for t in (0.01, 0.1)]
    xs, ys, mean, _, n = sensitivity_grid(one)   # a sweep of one setting is a one-row grid
    assert ys == [1.0] and n.shape == (1, 2)
    with pytest.raises(ValueError, match='differ in epochs'): sensitivity_grid(one + [row('ce+sil', 2, epochs=9)])


def test_select_rows_last_row_of_a_key_counts():
    a, b = row('ce', 0, 0.1), row('ce', 0, 0.2)
    assert select_rows([a, b]) == [b]
    assert select_rows([a, row('ce', 1)], seed=1)[0]['seed'] == 1


def interp(e, y, K=3):
    return EmbeddingInterpretation(e, y, y, [f'c{k}' for k in range(K)])


def test_projections_share_the_subset_and_limits():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat(40)
    e = torch.nn.functional.normalize(torch.randn(120, 5, generator=g) + 3 * torch.eye(5)[y], dim=1)
    fig = plot_projections({'a': interp(e, y), 'b': interp(e, y), 'c': interp(2 * e, y)}, n=50, seed=3)
    pts = [np.concatenate([c.get_offsets() for c in ax.collections]) for ax in fig.axes]
    assert all(len(p) == 50 for p in pts)
    np.testing.assert_allclose(pts[0], pts[1])             # the same samples, the same coordinates
    np.testing.assert_allclose(pts[2], 2 * pts[0], atol=1e-9)   # PCA is linear: twice the points, twice the coordinates
    assert len({ax.get_xlim() for ax in fig.axes}) == 1 and len({ax.get_ylim() for ax in fig.axes}) == 1
    assert len(fig.legends) == 1 and [t.get_text() for t in fig.legends[0].get_texts()] == ['c0', 'c1', 'c2']
    with pytest.raises(ValueError, match='no interpretations'): plot_class_silhouettes({})
    with pytest.raises(ValueError, match='method'): plot_projections({'a': interp(e, y)}, method='umap')


def test_run_interpretation_of_a_holdout_run_reads_its_test_set(tmp_path, one_thread):
    "A run that held out a validation set reports the test set (the official split): so does its interpretation."
    cfg = RunConfig('digits', 'mlp', 'ce', epochs=1, n_train=30, holdout=100)
    run_dir = tmp_path/'runs'/cfg.key
    res = train_and_evaluate(cfg, device='cpu', run_dir=run_dir)
    it = run_interpretation(run_dir)
    assert len(it.labels) == len(get_dls('digits', holdout=100, device='cpu')[2].dataset) == 359   # the official 20 %, not the 100 held out
    assert float((it.preds == it.labels).double().mean()) == pytest.approx(res['top1'], abs=1e-6)
    # the same samples without `holdout` are normalised with another training subset's statistics: 3.6e-4 off here
    assert float(it.silhouettes.mean()) == pytest.approx(res['silhouette'], abs=1e-5)
