"One rule per kind of argument, the same answer everywhere: a bad temperature gets the same error from every loss, objective and the command line."
import math
import pytest
import torch

from silhouette_nb.validation import check_temperature, validating, MAX_TEMPERATURE
from silhouette_nb.silhouette import SoftSilhouetteLoss, soft_silhouette_loss, soft_silhouette_score
from silhouette_nb.supcon import SupConLoss, supcon_loss
from silhouette_nb.objectives import make_objective

BAD = [math.inf, True, '0.1', None, 0, -1, math.nan, 1e-39, 1e5, 3.5e38, 1e300]   # the last three: above MAX_TEMPERATURE
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


@pytest.mark.parametrize('text', ['inf', 'nan', '0', '-1', 'True', 'none', '1e-39', '1e300'])
def test_the_command_line_names_the_temperature(text, capsys):
    from silhouette_nb.cli import main
    with pytest.raises(SystemExit) as e: main(['run', '--sil-temperature', text, '--dry-run'])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert 'sil_temperature' in err and 'Traceback' not in err, err


def test_a_huge_temperature_is_refused_by_the_run_config():
    from silhouette_nb.config import RunConfig
    for k in ('sil_temperature', 'supcon_temperature'):
        with pytest.raises(ValueError, match=k): RunConfig(**{k: 1e300})


@pytest.mark.parametrize('distance', ['euclidean', 'sqeuclidean', 'cosine'])
def test_the_largest_temperature_keeps_every_loss_finite_and_close_to_float64(distance):
    "At MAX_TEMPERATURE the float32 losses are finite and near their float64 value; just above it, they would not be (so the bound is not arbitrary)."
    torch.manual_seed(0)
    x, y = torch.randn(64, 16), torch.arange(64) % 10
    f = lambda x, t: soft_silhouette_loss(x, y, temperature=t, distance=distance)
    lo, hi = f(x, MAX_TEMPERATURE), f(x.double(), MAX_TEMPERATURE)
    assert torch.isfinite(lo) and abs(float(lo) - float(hi)) < 2e-3, (float(lo), float(hi))
    s = supcon_loss(x, y, temperature=MAX_TEMPERATURE)
    assert torch.isfinite(s) and abs(float(s) - float(supcon_loss(x.double(), y, temperature=MAX_TEMPERATURE))) < 1e-4
    from silhouette_nb.silhouette import soft_min
    for t in (1e8, 3.5e38):   # what the bound keeps out: the soft-min lost to rounding (0), then NaN
        m = torch.rand(64, 10) + 0.5
        b = soft_min(m, t)
        assert not bool(torch.isclose(b, m.mean(1), rtol=1e-2).all())
    for spec in ('ce+sil', 'ce+supcon', 'ce+sil+supcon'):
        obj = make_objective(spec, 10, 16, sil_temperature=MAX_TEMPERATURE, supcon_temperature=MAX_TEMPERATURE, sil_distance=distance)
        z = torch.randn(64, 16)
        out = {'features': z, 'logits': z[:, :10]}
        if 'supcon' in spec: out = {'features': torch.stack([z, z.roll(1, 1)], 1), 'logits': z[:, :10]}
        assert torch.isfinite(obj(out, y)['loss'])


@pytest.mark.parametrize('v', ['False', 'no', 0, 1, 1.0])
def test_validate_args_must_be_a_bool(v):
    with pytest.raises(TypeError, match='validate_args must be True, False or None'): validating(v)
    with pytest.raises(TypeError, match='validate_args'): soft_silhouette_loss(X, Y, validate_args=v)
