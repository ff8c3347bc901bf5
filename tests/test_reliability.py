"""Nothing lost, nothing silent (issue 19): a full disk while a model is saved keeps the run's row; a read-only run
folder is refused before training; a failing or diverging run is one line; a damaged run folder is one error naming
the file; labels on another device, heads far from the origin; the lock file of the claims goes with its last user.

Tests run as root here, and root ignores `chmod`: a folder that cannot be written is simulated where needed by making
the writes in it fail (`tempfile.NamedTemporaryFile` and `Path.write_text` raising `PermissionError` there), or, where
the test is about the path, by a file standing where the folder should be (which fails for root too).
"""
import json, math, os, shutil, subprocess, sys, tempfile
from pathlib import Path

import pytest
import torch

from silhouette_nb.config import RunConfig
from silhouette_nb import runner
from silhouette_nb.runner import run_configs, read_rows, load_run, run_folder_config, RunClaims

TINY = dict(epochs=1, n_train=200, n_valid=100)
pytestmark = pytest.mark.usefixtures('restore_threads')   # tests/conftest.py


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "One finished run (digits, mlp, ce, 1 epoch, 200 samples) and its folder."
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp('trained')
    cfg = RunConfig('digits', 'mlp', 'ce', **TINY)
    res = run_configs([cfg], out/'results.jsonl', device='cpu', progress=False, log=lambda *a: None)
    assert res['ran'] == 1
    return cfg, out/'runs'/cfg.key


# ---------------------------------------------------------------- a full disk while a model is written
def test_a_full_disk_while_saving_keeps_the_row_and_leaves_no_partial_model(tmp_path, monkeypatch):
    real = torch.save
    def full(obj, f, *a, **k):   # writes part of the file, then fails as torch does on a full disk
        if str(f).endswith('.tmp'): Path(f).write_bytes(b'PK\x03\x04 half a model')
        raise RuntimeError('[enforce fail at inline_container.cc:664] . unexpected pos 2048 vs 1994: No space left on device')
    monkeypatch.setattr(torch, 'save', full)
    lines = []
    cfg = RunConfig('digits', 'mlp', 'ce', **TINY)
    res = run_configs([cfg], tmp_path/'results.jsonl', device='cpu', progress=False, log=lines.append)
    monkeypatch.setattr(torch, 'save', real)
    assert res['ran'] == 1 and res['failed'] == []
    (row,) = read_rows(tmp_path/'results.jsonl')
    assert row['key'] == cfg.key and row['unsaved'] == ['model_last.pkl', 'model_best.pkl'] and row['top1'] is not None
    run = tmp_path/'runs'/cfg.key
    assert sorted(p.name for p in run.iterdir()) == ['config.json', 'history.jsonl', 'row.json']   # no .pkl, no .tmp
    assert any('could not write model_last.pkl' in l and 'No space left on device' in l for l in lines), lines
    assert any('not saved: model_last.pkl, model_best.pkl' in l for l in lines), lines
    assert not any('Traceback' in l for l in lines)


# ---------------------------------------------------------------- folders that cannot be written: refused before training
def _no_training(monkeypatch):
    def never(*a, **k): raise AssertionError('trained although the run folder cannot be written')
    monkeypatch.setattr(runner, 'train_and_evaluate', never)


def test_runs_folder_that_is_a_file_is_refused_before_training(tmp_path, monkeypatch):
    _no_training(monkeypatch)
    (tmp_path/'runs').write_text('not a folder')
    with pytest.raises(ValueError, match=r"the run folders' folder .*runs is a file"):
        run_configs([RunConfig('digits', 'mlp', 'ce', **TINY)], tmp_path/'results.jsonl', device='cpu', progress=False)


def _unwritable(monkeypatch, folder):
    "Writes into `folder` fail with EACCES, as in a read-only folder (chmod does not stop root)."
    folder = Path(folder).resolve()
    if os.geteuid() != 0:
        folder.chmod(0o500); return lambda: folder.chmod(0o700)
    real = tempfile.NamedTemporaryFile
    def ntf(*a, dir=None, **k):
        if dir is not None and Path(dir).resolve() == folder: raise PermissionError(13, 'Permission denied', str(dir))
        return real(*a, dir=dir, **k)
    monkeypatch.setattr(tempfile, 'NamedTemporaryFile', ntf)
    return lambda: None


@pytest.mark.parametrize('which', ['runs', 'run folder'])
def test_a_read_only_folder_is_refused_before_training_in_one_line(tmp_path, monkeypatch, capsys, which):
    cfg = RunConfig('digits', 'mlp', 'ce', **TINY)
    folder = tmp_path/'runs' if which == 'runs' else tmp_path/'runs'/cfg.key
    folder.mkdir(parents=True)
    _no_training(monkeypatch)
    restore = _unwritable(monkeypatch, folder)
    from silhouette_nb.cli import main
    try:
        with pytest.raises(SystemExit) as e:
            main(['run', '--dataset', 'digits', '--encoder', 'mlp', '--objective', 'ce', '--epochs', '1', '--n-train', '200',
                  '--n-valid', '100', '--device', 'cpu', '--no-bar', '--out', str(tmp_path)])
    finally: restore()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'cannot write in the run folder' in err and 'Permission denied' in err, err


# ---------------------------------------------------------------- a diverging run: one line, the epoch and the step
@pytest.mark.parametrize('validate', [True, False])
def test_a_diverging_run_is_one_line_naming_epoch_and_step(tmp_path, validate):
    from silhouette_nb.validation import set_default_validate_args
    set_default_validate_args(validate)
    lines = []
    try: res = run_configs([RunConfig('digits', 'mlp', 'ce', epochs=1, lr=1e6)], tmp_path/'results.jsonl', device='cpu',
                           progress=False, log=lines.append)
    finally: set_default_validate_args(True)
    ((key, why),) = res['failed']
    assert why.startswith('Diverged: the training diverged:') and 'at epoch 1, step ' in why and 'Exception occured' not in why, why
    failed = [l for l in lines if l.startswith('FAILED')]
    assert len(failed) == 1 and '\n' not in failed[0] and 'Traceback' not in ''.join(lines)
    assert 'Traceback' in (tmp_path/'runs'/key/'traceback.txt').read_text()
    assert read_rows(tmp_path/'results.jsonl') == []


def test_the_command_line_says_a_diverging_run_in_one_line(tmp_path, capsys):
    from silhouette_nb.cli import main
    rc = main(['run', '--dataset', 'digits', '--encoder', 'mlp', '--objective', 'ce', '--epochs', '1', '--lr', '1e6',
               '--device', 'cpu', '--no-bar', '--out', str(tmp_path)])
    out = capsys.readouterr()
    assert rc == 1 and 'Traceback' not in out.out + out.err
    (line,) = [l for l in out.out.splitlines() if l.startswith('FAILED')]
    assert 'became NaN or infinite at epoch 1, step' in line


# ---------------------------------------------------------------- a damaged run folder: one error naming the file
def _damaged(trained, tmp_path, fix):
    cfg, run = trained
    d = tmp_path/cfg.key
    shutil.copytree(run, d)
    fix(d)
    return d


@pytest.mark.parametrize('damage,match', [
    (lambda d: (d/'model_last.pkl').write_bytes((d/'model_last.pkl').read_bytes()[:5000]), 'model_last.pkl is not a readable model'),
    (lambda d: (d/'model_last.pkl').write_bytes(b''), 'model_last.pkl is empty'),
    (lambda d: (d/'model_last.pkl').write_bytes(os.urandom(3000)), 'model_last.pkl is not a readable model'),
    (lambda d: (d/'model_last.pkl').write_bytes(b'\x80\x04garbage'), 'model_last.pkl is not a readable model'),
    (lambda d: (d/'config.json').write_text((d/'config.json').read_text()[:40]), 'config.json is not valid JSON'),
    (lambda d: (d/'config.json').write_text(''), 'config.json is not valid JSON'),
    (lambda d: (d/'config.json').write_text('[1, 2]'), "config.json is not a run's configuration"),
], ids=['truncated model', 'empty model', 'random bytes', 'garbage pickle', 'truncated config', 'empty config', 'config not an object'])
def test_load_run_on_a_damaged_folder_is_one_error_naming_the_file(trained, tmp_path, damage, match):
    d = _damaged(trained, tmp_path, damage)
    with pytest.raises(ValueError, match=match) as e: load_run(d)
    assert str(d) in str(e.value) and '\n' not in str(e.value)


def test_a_config_edited_to_another_key_is_an_error(trained, tmp_path):
    def edit(d):
        c = json.loads((d/'config.json').read_text()); c['config']['epochs'] = 2
        (d/'config.json').write_text(json.dumps(c))
    d = _damaged(trained, tmp_path, edit)
    with pytest.raises(ValueError, match='it was edited'): load_run(d)
    def rekey(d):   # the key rewritten to match: the folder's name still tells
        c = json.loads((d/'config.json').read_text()); c['config']['epochs'] = 2
        c['key'] = RunConfig.from_dict(c['config']).key; (d/'config.json').write_text(json.dumps(c))
    d2 = _damaged(trained, tmp_path/'again', rekey)
    with pytest.raises(ValueError, match='sits in the run folder of'): load_run(d2)


def test_load_run_still_loads_a_sound_folder(trained):
    cfg, run = trained
    learn = load_run(run)
    assert learn.run_config == cfg and run_folder_config(run) == cfg


# ---------------------------------------------------------------- the objective: labels on another device
@pytest.mark.parametrize('spec', ['ce', 'ce+sil', 'ce+center', 'corel-gaussian', 'ce+sil+supcon'])
def test_labels_on_another_device_are_refused_before_their_values_are_read(spec):
    from silhouette_nb.objectives import make_objective
    x = torch.randn(16, 16)
    out = {'logits': x[:, :4], 'features': x}
    with pytest.raises(ValueError, match='labels are on meta but the outputs are on cpu'):
        make_objective(spec, 4, 16)(out, (torch.arange(16) % 4).to('meta'))


# ---------------------------------------------------------------- heads far from the origin
def test_gaussian_corel_at_1e20_is_finite_and_predicts_as_at_unit_scale():
    from silhouette_nb.corel import GaussianCOREL, gaussian_corel_loss
    from silhouette_nb.objectives import make_objective
    torch.manual_seed(0)
    x, y = torch.randn(32, 16), torch.arange(32) % 4
    head = GaussianCOREL(4, 16)
    for s in (1e20, 1e30):
        assert torch.isfinite(head(x * s, y)) and torch.equal(head.predict(x * s), head.predict(x * 1e4))
        obj = make_objective('corel-gaussian', 4, 16)
        assert torch.isfinite(obj({'features': x * s}, y)['loss'])
    W = torch.randn(4, 16, dtype=torch.float64)   # the rewritten loss is the loss, at every attraction weight
    for lam in (0., 0.3, 0.5, 1.):
        ref = lam * (0.5 * torch.cdist(x.double(), W) ** 2).gather(1, y[:, None])[:, 0] + (1 - lam) * torch.logsumexp(-0.5 * torch.cdist(x.double(), W) ** 2, 1)
        torch.testing.assert_close(gaussian_corel_loss(x.double(), W, y, 0.5, attraction=lam), ref.mean())


def test_center_loss_beyond_float32_is_one_error_not_inf():
    from silhouette_nb.heads import CenterLoss, center_loss
    x, y = torch.randn(8, 4), torch.arange(8) % 2
    with pytest.raises(ValueError, match='overflows torch.float32'): CenterLoss(2, 4)(x * 1e20, y)
    assert torch.isfinite(center_loss(x * 1e17, torch.zeros(2, 4), y))


def test_an_old_name_with_its_new_one_is_an_error():
    from silhouette_nb.corel import GaussianCOREL, CosineCOREL, attractive_repulsive
    for cls in (GaussianCOREL, CosineCOREL):
        with pytest.raises(TypeError, match='both `lam` and `attraction`'): cls(4, 16, lam=0.3, attraction=0.2)
    with pytest.raises(TypeError, match='both `lam` and `attraction`'): attractive_repulsive(torch.ones(2), torch.ones(2), attraction=0.2, lam=0.3)
    with pytest.warns(DeprecationWarning): assert GaussianCOREL(4, 16, lam=0.3).attraction == 0.3


# ---------------------------------------------------------------- the claims' lock file
CLAIM = """
import sys, time
from silhouette_nb.runner import RunClaims
with RunClaims(sys.argv[1]) as c:
    print(c.claim('0123456789ab'), flush=True)
    if sys.argv[2] == 'wait': sys.stdin.readline()   # until the test says so
"""


def test_the_lock_file_goes_with_its_last_user_and_never_splits_the_claims(tmp_path):
    res = tmp_path/'results.jsonl'
    slow = subprocess.Popen([sys.executable, '-c', CLAIM, str(res), 'wait'], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert slow.stdout.readline().strip() == 'True'
    quick = subprocess.run([sys.executable, '-c', CLAIM, str(res), 'now'], capture_output=True, text=True)
    assert quick.stdout.strip() == 'False'                          # one file: the slow one's claim holds
    assert (tmp_path/'results.jsonl.lock').exists()                 # the slow process still uses it
    slow.communicate('go\n', timeout=60)
    assert not (tmp_path/'results.jsonl.lock').exists()             # its last user removed it
    with RunClaims(res) as c:                                       # and the next list makes a new one
        assert c.claim('0123456789ab') and (tmp_path/'results.jsonl.lock').exists()
    assert not (tmp_path/'results.jsonl.lock').exists()


def test_many_processes_entering_and_leaving_never_claim_one_run_twice(tmp_path):
    "Four processes each enter, claim the same key, hold it briefly and leave, many times: no two hold it at once."
    script = """
import sys, time, os
from silhouette_nb.runner import RunClaims
log = open(sys.argv[2], 'a')
for _ in range(30):
    with RunClaims(sys.argv[1]) as c:
        if c.claim('00000000000f'):
            fd = os.open(sys.argv[3], os.O_CREAT | os.O_EXCL | os.O_WRONLY)   # fails if another process holds the claim too
            time.sleep(0.002); os.close(fd); os.unlink(sys.argv[3]); c.release('00000000000f')
"""
    procs = [subprocess.Popen([sys.executable, '-c', script, str(tmp_path/'r.jsonl'), str(tmp_path/'log'), str(tmp_path/'held')],
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    assert not (tmp_path/'r.jsonl.lock').exists()


# ---------------------------------------------------------------- the report: damaged histories, odd values, its folder
def _rows(tmp_path, values, suite=None, objective='ce', histories=True):
    "A results file of hand-made rows (digits mlp `objective`, one per seed), with a two-epoch history per run."
    from dataclasses import asdict
    res = tmp_path/'results.jsonl'
    tmp_path.mkdir(parents=True, exist_ok=True)
    with open(res, 'w') as f:
        for seed, v in enumerate(values):
            c = RunConfig('digits', 'mlp', objective, seed=seed, **TINY)
            f.write(json.dumps({'key': c.key, 'suite': suite, 'dataset': 'digits', 'encoder': 'mlp', 'objective': objective,
                                'seed': seed, 'top1': v, 'silhouette': 0.5, 'sec_per_epoch': 1.0, 'config': asdict(c)}) + '\n')
            if histories:
                (tmp_path/'runs'/c.key).mkdir(parents=True)
                (tmp_path/'runs'/c.key/'history.jsonl').write_text(''.join(json.dumps({'stage': 1, 'epoch': e, 'top1': v, 'silhouette': 0.5}) + '\n' for e in (1, 2)))
    return res, [RunConfig('digits', 'mlp', objective, seed=s, **TINY).key for s in range(len(values))]


@pytest.mark.parametrize('damage,says', [
    (lambda h: h.write_text('[1, 2]\n'), 'line 1 is not a JSON object'),
    (lambda h: h.write_text('{"stage": 1, "epoch": 1, "top1": 0.5}\n{"stage": 1, "ep'), 'line 2 is not JSON'),
    (lambda h: (h.unlink(), h.mkdir()), 'a folder, not a file'),
], ids=['not an object', 'torn', 'a folder'])
def test_a_bad_history_leaves_out_that_curve_with_a_note(tmp_path, damage, says):
    from silhouette_nb.report import write_report, curves
    res, keys = _rows(tmp_path, [0.9, 0.8, 0.85])
    damage(tmp_path/'runs'/keys[1]/'history.jsonl')
    notes = []
    cur = curves(read_rows(res), tmp_path/'runs', notes=notes)
    assert cur[('digits', 'mlp', 'ce')]['n'] == 2 and len(notes) == 1   # the other two runs' curves are there
    assert notes[0].startswith(f"{tmp_path/'runs'/keys[1]/'history.jsonl'}: {says}")
    if says.startswith('line 1'):   # the report carries the note (one report is enough: they are slow to draw)
        assert f"**Curves left out**: {notes[0]}" in write_report(res).read_text()


def test_nan_and_inf_in_rows_are_shown_and_counted_not_hiding_the_others(tmp_path):
    from silhouette_nb.report import write_report, summarize
    res, _ = _rows(tmp_path, [0.9, math.nan, 0.8, math.inf], histories=False)
    s = summarize(read_rows(res))[('digits', 'mlp', 'ce')]
    assert math.isclose(s['top1'][0], 0.85) and s['nonfinite']['top1'] == ['NaN', '+inf']
    md = write_report(res).read_text()
    assert '| ce | 85.00 ± 7.07 (n=2; and 1 NaN, 1 +inf) |' in md, md
    assert '**Not finite**: 2 values of the rows are NaN or ±inf' in md
    res2, _ = _rows(tmp_path/'b', [math.nan, math.nan], histories=False)
    assert '| ce | 2 NaN |' in write_report(res2).read_text()


def test_report_title_axis_and_labels(tmp_path):
    from silhouette_nb.report import write_report, plot_curves, curves, plot_metric, summarize
    from PIL import Image
    res, _ = _rows(tmp_path, [0.87, 0.88])
    md = write_report(res).read_text()
    assert md.startswith(f"# Results: single runs in `{tmp_path.name}`") and 'None' not in md.splitlines()[0]
    fig = plot_curves(curves(read_rows(res), tmp_path/'runs'))
    assert fig.axes[1].get_xlabel() == 'epoch'                     # one stage: no "(both stages)"
    ylim = json.loads(Image.open(tmp_path/'top1.png').text['Description'])['ylim']
    assert 80 < ylim[0] < 87 and 88 < ylim[1] < 95, ylim            # zoomed to 87-88 %, not from 0
    assert f"y axis {ylim[0]:.1f}" in plot_metric(summarize(read_rows(res)), 'top1').axes[0].get_title()
    res2, _ = _rows(tmp_path/'sc', [0.5], objective='supcon')
    hist = tmp_path/'sc'/'runs'/RunConfig('digits', 'mlp', 'supcon', **TINY).key/'history.jsonl'
    hist.write_text(hist.read_text() + json.dumps({'stage': 2, 'epoch': 1, 'top1': 0.5}) + '\n')
    assert plot_curves(curves(read_rows(res2), tmp_path/'sc'/'runs')).axes[1].get_xlabel() == 'epoch (both stages)'


def test_the_report_lists_the_runs_its_suite_expected(tmp_path):
    from dataclasses import asdict
    from silhouette_nb.config import QUICK
    from silhouette_nb.report import write_report
    cfgs = QUICK.configs()
    res = tmp_path/'results.jsonl'
    res.write_text(''.join(json.dumps({'key': c.key, 'suite': 'quick', 'dataset': c.dataset, 'encoder': c.encoder,
                                       'objective': c.objective, 'seed': c.seed, 'top1': 0.9, 'config': asdict(c)}) + '\n'
                           for c in cfgs if not (c.dataset == 'mnist1d' and c.seed == 1)))
    md = write_report(res).read_text()
    assert md.startswith('# Results: `quick`')
    assert '**Missing runs**: 9 of the 81 runs of suite `quick` have no row:' in md
    assert '- mnist1d cnn ce+sil seed=1' in md and '- digits cnn ce seed=1' not in md


def _report_main(args, capsys):
    from silhouette_nb.cli import main
    with pytest.raises(SystemExit) as e: main(['report', *args])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and 'Traceback' not in err, err
    return err


def test_report_out_that_is_a_file_read_only_or_full_is_one_line(tmp_path, monkeypatch, capsys):
    res, _ = _rows(tmp_path, [0.9, 0.8])
    (tmp_path/'afile').write_text('')
    assert 'the report folder' in _report_main([str(res), '--out', str(tmp_path/'afile')], capsys)
    (tmp_path/'ro').mkdir()
    restore = _unwritable(monkeypatch, tmp_path/'ro')
    try: assert 'cannot write in the report folder' in _report_main([str(res), '--out', str(tmp_path/'ro')], capsys)
    finally: restore()
    monkeypatch.undo()
    from matplotlib.figure import Figure
    def full(self, fname, *a, **k): raise OSError(28, 'No space left on device', str(fname))
    monkeypatch.setattr(Figure, 'savefig', full)
    err = _report_main([str(res), '--out', str(tmp_path/'full')], capsys)
    assert 'cannot write the report in' in err and 'No space left on device' in err


# ---------------------------------------------------------------- suite files, settings files and --set: no raw TypeError
SUITE_BAD = {'seeds = 0': '`seeds` must be', 'objectives = 3': '`objectives` must be', 'datasets = 5': '`datasets` must be',
             'common = 3': '`common` must be a table', '[datasets]\ndigits = 3': '`datasets.digits` must be a table',
             'objectives = "ce"': '`objectives` must be', 'name = 5': '`name` must be a string', 'doc = [1, 2]': '`doc` must be a string',
             '[per_objective."ce+sill"]\nsil_weight = 1': 'unknown objective `per_objective.ce+sill`',
             '[per_encoder.vit]\nepochs = 1': 'unknown encoder `per_encoder.vit`',
             '[common]\nseed = 1': 'unknown setting `common.seed`', '[common]\nepochs = 2.5': '`common.epochs` must be an integer',
             '[common]\naugment = "no"': '`common.augment` must be true or false', '[common]\nlr = []': '`common.lr` sweeps no values',
             'seeds = ' + '[' * 3000 + ']' * 3000: 'nested too deeply', 'seeds = [[[[[[[[1]]]]]]]]': '`seeds` must be',
             '[common]\nlr = ' + '[' * 30 + '1' + ']' * 30: '`common.lr` must be a number'}


@pytest.mark.parametrize('text', list(SUITE_BAD), ids=lambda t: t[:30])
def test_a_bad_suite_file_is_one_error_naming_file_and_key(tmp_path, capsys, text):
    from silhouette_nb.cli import main
    keys = {'datasets': 'datasets = ["digits"]', 'objectives': 'objectives = ["ce"]'}
    head = [v for k, v in keys.items() if not text.startswith(k) and not (k == 'datasets' and text.startswith('[datasets]'))]
    f = tmp_path/'my.toml'
    f.write_text('\n'.join(head) + '\n' + text + '\n')
    with pytest.raises(SystemExit) as e: main(['suite', str(f), '--dry-run', '--out', str(tmp_path/'o')])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and str(f) in err and SUITE_BAD[text] in err, err
    assert len(err) < 600


@pytest.mark.parametrize('text,says', [('epochs = "3"', '`epochs` must be an integer'), ('lr = [[1e-3]]', '`lr` must be a number'),
                                        ('seed = ' + '[' * 3000 + ']' * 3000, 'nested too deeply'), ('dataset = 5', '`dataset` must be a string')])
def test_a_bad_settings_file_is_one_error(tmp_path, capsys, text, says):
    from silhouette_nb.cli import main
    f = tmp_path/'run.toml'; f.write_text(text + '\n')
    with pytest.raises(SystemExit) as e: main(['run', '--config', str(f), '--dry-run', '--out', str(tmp_path/'o')])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and says in err and str(f) in err, err


def test_a_base_suite_with_new_names_and_a_text_with_old_ones_do_not_clash():
    from silhouette_nb.config import Suite, STANDARD
    s = Suite.from_toml('name = "x"\ndatasets = ["digits"]\n[common]\nlam = 0.3\n', base=Suite.from_toml(
        'datasets = ["digits"]\nobjectives = ["ce+sil"]\n[common]\nsil_weight = 2.0\n'))
    assert s.configs(seeds=[0])[0].sil_weight == 0.3


def test_huge_sweeps_are_counted_and_refused_and_absurd_epochs_too(tmp_path, capsys, monkeypatch):
    from silhouette_nb import cli
    from silhouette_nb.cli import main
    from silhouette_nb.config import QUICK, MAX_RUNS
    assert QUICK.size(seeds=range(100), lr=[1e-3, 2e-3, 3e-3, 4e-3, 5e-3]) == 13_500 > MAX_RUNS
    with pytest.raises(ValueError, match='more than MAX_RUNS'): QUICK.configs(seeds=range(100), lr=[1e-3, 2e-3, 3e-3, 4e-3, 5e-3])
    for args in (['run', '--set', 'seed=' + ','.join(map(str, range(MAX_RUNS + 1)))], ['suite', 'quick', '--seeds', *map(str, range(400))],
                 ['run', '--epochs', str(10**12)]):
        with pytest.raises(SystemExit) as e: main(args + ['--dry-run', '--out', str(tmp_path)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and ('more than 10000' in err or 'more than MAX_EPOCHS' in err), err
    monkeypatch.setattr(cli, 'MAX_RUNS', 20)   # --many lets a sweep past the bound (a small bound: making 10001 configs is slow)
    with pytest.raises(SystemExit): main(['run', '--set', 'seed=' + ','.join(map(str, range(21))), '--dry-run', '--out', str(tmp_path)])
    assert 'more than 20' in capsys.readouterr().err
    assert main(['run', '--set', 'seed=' + ','.join(map(str, range(21))), '--many', '--dry-run', '--out', str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith('21 runs;')


def test_the_dry_run_streams(tmp_path):
    "The listing's first line is printed before the last configuration is made."
    from silhouette_nb import cli
    made, seen = [], []
    args = cli.make_parser().parse_args(['run', '--dry-run', '--out', str(tmp_path)])
    cfgs = (RunConfig(seed=s) for s in range(50))
    def log(line): seen.append((line, len(made)))
    def gen():
        for c in cfgs: made.append(1); yield c
    cli._run_list(args, gen(), None, log, [])
    assert seen[0][1] == 1 and seen[-2][1] == 50 and seen[-1][0].startswith('50 runs')   # line i printed when i configs exist


def test_old_flags_and_set_print_the_deprecation_note(tmp_path, capsys):
    from silhouette_nb.cli import main
    for args in (['--lam', '0.3'], ['--set', 'lam=0.3'], ['--corel-lam', '0.2', '--objective', 'corel-cosine'], ['--mu', '0.5', '--objective', 'ce+supcon']):
        assert main(['run', *args, '--dry-run', '--out', str(tmp_path)]) == 0
        err = capsys.readouterr().err
        assert 'DeprecationWarning: ' in err and 'is deprecated: use' in err, err
    with pytest.raises(SystemExit) as e: main(['run', '--lam', '0.3', '--set', 'center_weight=0.1', '--dry-run', '--out', str(tmp_path)])
    assert e.value.code == 2 and 'are both set' in capsys.readouterr().err
    from silhouette_nb.config import RunConfig as RC
    with pytest.raises(ValueError, match='are both set'): RC.from_dict({'corel_attraction': 0.1, 'corel_lam': 0.2})
    with pytest.raises(ValueError, match='are both set'): RC.from_dict({'corel_lam': 0.2, 'corel_attraction': 0.1})
