"One rule per kind of argument, the same answer everywhere: a bad temperature gets the same error from every loss, objective and the command line."
import math
import pytest
import torch

from silhouette_nb.validation import check_temperature
from silhouette_nb.silhouette import SoftSilhouetteLoss, soft_silhouette_loss, soft_silhouette_score
from silhouette_nb.supcon import SupConLoss, supcon_loss
from silhouette_nb.objectives import make_objective

BAD = [math.inf, True, '0.1', None, 0, -1, math.nan, 1e-39]
X, Y = torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def error(f):
    "The (type, message) of the exception `f()` raises."
    with pytest.raises((ValueError, TypeError)) as e: f()
    return type(e.value), str(e.value)


def entry_points(v):
    "Every public way to give a temperature, each called with the value `v`."
    from silhouette_nb import pml
    return {'soft_silhouette_loss': lambda: soft_silhouette_loss(X, Y, temperature=v),
            'soft_silhouette_score': lambda: soft_silhouette_score(X, Y, temperature=v),
            'SoftSilhouetteLoss': lambda: SoftSilhouetteLoss(temperature=v),
            'supcon_loss': lambda: supcon_loss(X, Y, temperature=v),
            'SupConLoss': lambda: SupConLoss(temperature=v),
            'pml.SoftSilhouetteLoss': lambda: pml.SoftSilhouetteLoss(temperature=v),
            'pml.SupConLoss': lambda: pml.SupConLoss(temperature=v)}


@pytest.mark.parametrize('v', BAD, ids=repr)
def test_every_loss_gives_the_same_error(v):
    expected = error(lambda: check_temperature(v))
    got = {name: error(f) for name, f in entry_points(v).items()}
    assert all(g == expected for g in got.values()), (expected, got)
    assert 'temperature' in expected[1]


@pytest.mark.parametrize('v', BAD, ids=repr)
@pytest.mark.parametrize('option,spec', [('sil_temperature', 'ce+sil'), ('supcon_temperature', 'ce+supcon')])
def test_every_objective_names_its_temperature(v, option, spec):
    assert error(lambda: make_objective(spec, 4, 4, **{option: v})) == error(lambda: check_temperature(v, option))


@pytest.mark.parametrize('text', ['inf', 'nan', '0', '-1', 'True', 'none', '1e-39'])
def test_the_command_line_names_the_temperature(text, capsys):
    from silhouette_nb.cli import main
    with pytest.raises(SystemExit) as e: main(['run', '--sil-temperature', text, '--dry-run'])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert 'sil_temperature' in err and 'Traceback' not in err, err
