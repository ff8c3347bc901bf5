"""Tests of the runner (`config`, `runner`, `report`, `cli`) and the `silhouette-nb` command: a tiny suite run through the console script,
interrupted (SIGINT, then SIGKILL) after a row appears and resumed (no duplicate, no lost row); the report (tables and
PNGs hold the numbers of the rows); configuration errors (clear message naming the valid choices, exit status 2);
determinism on the CPU; and the `paper` suite end to end on tiny fixture files of its seven datasets, one epoch.
"""
import hashlib, json, math, os, pickle, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import torch
from PIL import Image
from torchvision import datasets as tvd

from silhouette_nb.config import PAPER, QUICK, SUITES, N_CLASSES, RunConfig
from silhouette_nb.runner import append_row, read_rows, result_row, train_and_evaluate
from silhouette_nb.cli import main
from silhouette_nb.report import write_report

SCRIPT = Path(sys.executable).parent/'silhouette-nb'
CLI = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, '-c', 'import sys; from silhouette_nb.cli import main; sys.exit(main())']
ENV = {**os.environ, 'MPLBACKEND': 'Agg', 'PYTHONUNBUFFERED': '1'}

# a tiny slice of the quick suite: digits, 3 objectives x 2 seeds, 300 training samples, 8 epochs (long enough, at about
# 0.5 s a run, for a signal sent after the first row to land before the last)
TINY = ['--datasets', 'digits', '--objectives', 'ce', 'ce+sil', 'corel-cosine', '--seeds', '0', '1',
        '--set', 'epochs=8', '--set', 'n_train=300', '--set', 'n_valid=150']
TINY_KEYS = [c.key for c in QUICK.configs(seeds=(0, 1), datasets=('digits',), objectives=('ce', 'ce+sil', 'corel-cosine'),
                                          epochs=8, n_train=300, n_valid=150)]


pytestmark = pytest.mark.usefixtures('restore_threads')   # tests/conftest.py


def n_rows(p): return len(read_rows(p, warn=False)) if p.exists() else 0


def _ignore_sigint(): signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_suite(out, sigint_ignored=False):
    "The TINY suite through the console script; `sigint_ignored`: started as a shell starts a background job (`cmd &`)."
    return subprocess.Popen(CLI + ['suite', 'quick', '--out', str(out), '--device', 'cpu', '--no-bar'] + TINY,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                            preexec_fn=_ignore_sigint if sigint_ignored else None)


def wait_for_rows(proc, path, n, timeout=240):
    "Wait until `path` holds at least `n` rows (or the process ends)."
    t0 = time.time()
    while n_rows(path) < n and proc.poll() is None:
        if time.time() - t0 > timeout: proc.kill(); pytest.fail(f"no row {n} after {timeout} s")
        time.sleep(0.02)


# ---------------------------------------------------------------- run, kill, resume through the console script
@pytest.fixture(scope='module')
def interrupted_suite(tmp_path_factory):
    """Run TINY through `silhouette-nb`, SIGINT it after the first row, SIGKILL it after one more, then resume it.
    The first process starts with SIGINT ignored, as under `make test &` or `nohup`, whatever this process inherited:
    the command must stop on SIGINT all the same (`cli._sigint_raises`), so the test means the same wherever it runs."""
    out = tmp_path_factory.mktemp('suite')
    res = out/'results.jsonl'
    log = {}
    p = start_suite(out, sigint_ignored=True)
    wait_for_rows(p, res, 1)
    p.send_signal(signal.SIGINT)
    log['sigint_out'], log['sigint_rc'] = p.communicate(timeout=120)[0], p.returncode
    log['after_sigint'] = [r['key'] for r in read_rows(res)]
    p = start_suite(out)
    wait_for_rows(p, res, len(log['after_sigint']) + 1)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    log['after_sigkill'] = [r['key'] for r in read_rows(res)]
    p = start_suite(out)
    log['resume_out'], log['resume_rc'] = p.communicate(timeout=300)[0], p.returncode
    return out, log


def test_interrupt_and_resume(interrupted_suite):
    out, log = interrupted_suite
    first = log['after_sigint']
    assert 1 <= len(first) < len(TINY_KEYS), log['sigint_out']
    assert log['sigint_rc'] == 130 and 'run the same command again to resume' in log['sigint_out'], log['sigint_out']
    assert len(log['after_sigkill']) > len(first)
    assert log['after_sigkill'][:len(first)] == first                 # what was recorded stays recorded
    assert log['resume_rc'] == 0, log['resume_out']
    assert f"{len(log['after_sigkill'])} already in" in log['resume_out']
    keys = [r['key'] for r in read_rows(out/'results.jsonl')]
    assert sorted(keys) == sorted(TINY_KEYS)                          # no duplicate, no lost row
    assert keys[:len(log['after_sigkill'])] == log['after_sigkill']
    # everything recorded: a fourth run trains nothing
    assert main(['suite', 'quick', '--out', str(out), '--device', 'cpu', '--no-bar'] + TINY) == 0
    assert len(read_rows(out/'results.jsonl')) == len(TINY_KEYS)


def test_rows_schema(interrupted_suite):
    out, _ = interrupted_suite
    for r in read_rows(out/'results.jsonl'):
        assert RunConfig(**r['config']).key == r['key'] and r['suite'] == 'quick'
        for m in ('top1', 'knn'): assert 0 <= r[m] <= 1
        for m in ('silhouette', 'nmi', 'ari'): assert -1 <= r[m] <= 1
        assert r['sec_per_epoch'] > 0 and r['peak_mem_mib'] > 0 and r['wall_s'] > 0
        assert r['device'] == 'cpu (1 thread)' and r['version'] and r['torch'] == torch.__version__
        assert r['config']['epochs'] == 8 and r['config']['n_train'] == 300


def test_report(interrupted_suite, tmp_path, capsys):
    out, _ = interrupted_suite
    assert main(['report', str(out/'results.jsonl'), '--out', str(tmp_path)]) == 0
    md = (tmp_path/'report.md').read_text()
    rows = read_rows(out/'results.jsonl')
    for obj in ('ce', 'ce+sil', 'corel-cosine'):
        for m, scale, dec in (('top1', 100, 2), ('silhouette', 1, 3), ('knn', 100, 2), ('nmi', 1, 3), ('ari', 1, 3)):
            v = np.array([r[m] for r in rows if r['objective'] == obj]) * scale
            assert len(v) == 2
            assert f"| {obj} | {v.mean():.{dec}f} ± {v.std(ddof=1):.{dec}f} |" in md.split(f'\n## ')[[s.split('\n')[0] for s in md.split('\n## ')].index(
                {'top1': 'Top-1 accuracy (%)', 'silhouette': 'Silhouette of the embeddings', 'knn': '5-NN accuracy (%)',
                 'nmi': 'NMI of k-means', 'ari': 'ARI of k-means'}[m])]
    for m in ('top1', 'silhouette', 'knn', 'nmi', 'ari'):
        png = tmp_path/f'{m}.png'
        assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and f'({m}.png)' in md
        im = Image.open(png); im.load()
        assert im.size[0] > 300 and im.size[1] > 200
        plotted = json.loads(im.text['Description'])
        assert plotted['metric'] == m
        for obj in ('ce', 'ce+sil', 'corel-cosine'):
            v = np.array([r[m] for r in rows if r['objective'] == obj]) * (100 if m in ('top1', 'knn') else 1)
            mean, std = plotted['mean_std'][obj]['digits']
            assert math.isclose(mean, v.mean(), rel_tol=1e-9) and math.isclose(std, v.std(ddof=1), rel_tol=1e-9)
    assert 'wrote' in capsys.readouterr().out


def test_report_errors(tmp_path):
    with pytest.raises(SystemExit) as e: main(['report', str(tmp_path/'none.jsonl')])
    assert e.value.code == 2
    (tmp_path/'results.jsonl').write_text('{"key": "torn"')
    with pytest.raises(SystemExit) as e: main(['report', str(tmp_path)])
    assert e.value.code == 2


def test_torn_line_is_skipped_and_next_row_starts_clean(tmp_path):
    p = tmp_path/'r.jsonl'
    cfg = RunConfig(epochs=1)
    row = result_row(cfg, {'top1': 0.5, 'silhouette': float('nan')})
    append_row(p, row)
    with open(p, 'a') as f: f.write('{"key": "abc", "top1"')       # a process killed mid-write
    append_row(p, row)
    rows = read_rows(p, warn=False)
    assert [r['key'] for r in rows] == [cfg.key, cfg.key] and rows[0]['silhouette'] is None
    assert p.read_text().count('\n') == 3


# ---------------------------------------------------------------- configuration errors
@pytest.mark.parametrize('args, msg', [
    (['run', '--dataset', 'mnist'], "unknown dataset 'mnist'; choose one of digits, mnist1d, fashion_mnist, cifar10"),
    (['run', '--objective', 'ce+triplet'], "unknown objective 'ce+triplet'; choose one of ce, ce+sil, supcon, ce+supcon"),
    (['run', '--encoder', 'vit'], "unknown encoder 'vit'; choose one of cnn, convnet, mlp, efficientnet_b0, resnet18"),
    (['run', '--epochs', 'zero'], "epochs must be an integer, got 'zero'"),
    (['run', '--epochs', '0'], "epochs must be a positive int, got 0"),
    (['run', '--objective', 'supcon', '--views', '1'], "needs positive pairs"),
    (['run', '--sil-temperature', 'inf'], "sil_temperature must be"),
    (['suite', 'huge'], "unknown suite 'huge'; choose one of quick, corel, paper"),
    (['suite', 'quick', '--datasets', 'cifar10'], "unknown dataset for suite 'quick' 'cifar10'; choose one of digits, mnist1d, fashion_mnist"),
    (['suite', 'quick', '--objectives', 'triplet'], "choose one of ce, ce+sil"),
    (['suite', 'quick', '--encoders', 'vit'], "choose one of cnn, convnet, mlp"),
    (['suite', 'quick', '--set', 'epochz=1'], "cannot set epochz"),
    (['suite', 'quick', '--set', 'lr=-1'], "lr must be a finite number in (0"),
])
def test_config_errors(args, msg, capsys, tmp_path):
    with pytest.raises(SystemExit) as e: main(args + ['--out', str(tmp_path)] if args[0] != 'report' else args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert msg in err and err.startswith(f'silhouette-nb {args[0]}: error:'), err
    assert not list(tmp_path.iterdir())                                # nothing was run or written


def test_config_error_through_the_script():
    p = subprocess.run(CLI + ['run', '--objective', 'triplet'], capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 2 and "unknown objective 'triplet'; choose one of ce, ce+sil" in p.stderr


@pytest.mark.parametrize('cmd', [[], ['run'], ['suite'], ['report']])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e: main(cmd + ['--help'])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith('usage: silhouette-nb' + (f' {cmd[0]}' if cmd else ''))
    out = ' '.join(out.split())                                        # argparse wraps lines
    if cmd == ['run']: assert '--sil-temperature' in out and 'one of ce, ce+sil' in out
    if cmd == ['suite']: assert 'quick' in out and 'corel' in out and 'paper' in out and '--set FIELD=VALUE' in out


def test_suite_list(capsys, tmp_path):
    assert main(['suite', 'quick', '--list', '--out', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert '81 runs.' in out and '0 of them already in' in out
    assert {n: len(s.configs()) for n, s in SUITES.items()} == {'quick': 81, 'corel': 18, 'paper': 147, 'paper-smoke': 14,
                                                               'standard': 36, 'standard-corel': 9, 'sensitivity': 48, 'standard-supcon': 6,
                                                               'scarce': 360, 'ablation': 10, 'ablation-variants': 30, 'unseen': 35,
                                                               'unseen-mnist1d': 70}


# ---------------------------------------------------------------- determinism on the CPU
def test_same_seed_same_metrics():
    torch.set_num_threads(1)
    metrics = ('top1', 'silhouette', 'knn', 'nmi', 'ari', 'valid_loss')
    # two views, augmentation, class-balanced batches and a learned head: every source of randomness at once
    cfg = RunConfig('digits', 'cnn', 'ce+sil+supcon', seed=3, epochs=1, bs=32, balanced=4, n_train=200, n_valid=100)
    a, b = train_and_evaluate(cfg, device='cpu'), train_and_evaluate(cfg, device='cpu')
    assert {k: a[k] for k in metrics} == {k: b[k] for k in metrics}
    c = train_and_evaluate(RunConfig(**{**cfg.__dict__, 'seed': 4}), device='cpu')
    assert {k: a[k] for k in metrics} != {k: c[k] for k in metrics}
    # and the two-stage SupCon run
    cfg2 = RunConfig('digits', 'mlp', 'supcon', seed=0, epochs=1, probe_epochs=1, n_train=200, n_valid=100)
    a2, b2 = train_and_evaluate(cfg2, device='cpu'), train_and_evaluate(cfg2, device='cpu')
    assert {k: a2[k] for k in metrics} == {k: b2[k] for k in metrics}


def test_run_command(tmp_path, capsys):
    args = ['run', '--dataset', 'digits', '--encoder', 'mlp', '--objective', 'corel-gaussian', '--epochs', '1',
            '--n-train', '200', '--n-valid', '100', '--dim', 'none', '--augment', 'false', '--out', str(tmp_path), '--device', 'cpu']
    assert main(args) == 0
    rows = read_rows(tmp_path/'results.jsonl')
    cfg = RunConfig('digits', 'mlp', 'corel-gaussian', epochs=1, n_train=200, n_valid=100, dim=None, augment=False)
    assert [r['key'] for r in rows] == [cfg.key] and rows[0]['suite'] is None
    assert main(args) == 0 and '1 already in' in capsys.readouterr().out
    assert len(read_rows(tmp_path/'results.jsonl')) == 1
    assert main(args + ['--force']) == 0
    rows = read_rows(tmp_path/'results.jsonl')
    assert len(rows) == 2 and rows[0]['top1'] == rows[1]['top1']            # same seed, same numbers
    assert main(['run', '--dataset', 'fashion_mnist', '--epochs', '1', '--data-path', str(tmp_path/'no'), '--out', str(tmp_path)]) == 1
    assert 'fashion_mnist runs: its files are missing' in capsys.readouterr().out


def test_missing_dataset_is_skipped_not_fatal(tmp_path, capsys):
    args = ['suite', 'quick', '--out', str(tmp_path), '--datasets', 'fashion_mnist', 'digits', '--objectives', 'ce',
            '--seeds', '0', '--set', 'epochs=1', '--set', 'n_train=200', '--set', 'n_valid=100', '--device', 'cpu',
            '--no-bar', '--data-path', str(tmp_path/'nowhere')]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert 'skipping the 1 fashion_mnist runs: its files are missing' in out and 'apt-get install dataset-fashion-mnist' in out
    assert [r['dataset'] for r in read_rows(tmp_path/'results.jsonl')] == ['digits']


# ---------------------------------------------------------------- the paper suite on fixtures of its seven datasets
RNG = np.random.default_rng(0)


def md5(p): return hashlib.md5(Path(p).read_bytes()).hexdigest()


def jpg(path, size=(36, 36)):
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def write_fixtures(root, monkeypatch, n_train=12, n_test=8, n_cls=3):
    """The seven datasets in their on-disk formats (as in tests/test_data.py), `n_cls` classes, `n_test` test images.
    torchvision's MD5 checks of CIFAR and Flowers are pointed at the fixtures' digests (they still run)."""
    root = Path(root)
    ytr, yte = [i % n_cls for i in range(n_train)], [i % n_cls for i in range(n_test)]
    # CIFAR-10: five training pickles, test_batch, batches.meta
    base = root/'cifar-10-batches-py'; base.mkdir(parents=True)
    for nm, ys in [(f'data_batch_{i}', ytr[i - 1::5]) for i in range(1, 6)] + [('test_batch', yte)]:
        d = {'batch_label': nm, 'labels': ys, 'data': RNG.integers(0, 255, (len(ys), 3072), dtype=np.uint8),
             'filenames': [f'{i}.png' for i in range(len(ys))]}
        (base/nm).write_bytes(pickle.dumps(d, protocol=2))
    (base/'batches.meta').write_bytes(pickle.dumps({'label_names': [f'c{i}' for i in range(10)]}, protocol=2))
    monkeypatch.setattr(tvd.CIFAR10, 'train_list', [[f'data_batch_{i}', md5(base/f'data_batch_{i}')] for i in range(1, 6)])
    monkeypatch.setattr(tvd.CIFAR10, 'test_list', [['test_batch', md5(base/'test_batch')]])
    monkeypatch.setattr(tvd.CIFAR10, 'meta', {**tvd.CIFAR10.meta, 'md5': md5(base/'batches.meta')})
    # CIFAR-100: train, test, meta
    base = root/'cifar-100-python'; base.mkdir(parents=True)
    for nm, ys in [('train', ytr), ('test', yte)]:
        d = {'filenames': [f'{i}.png' for i in range(len(ys))], 'batch_label': nm, 'fine_labels': ys,
             'coarse_labels': [0] * len(ys), 'data': RNG.integers(0, 255, (len(ys), 3072), dtype=np.uint8)}
        (base/nm).write_bytes(pickle.dumps(d, protocol=2))
    (base/'meta').write_bytes(pickle.dumps({'fine_label_names': [f'f{i}' for i in range(100)],
                                            'coarse_label_names': [f'k{i}' for i in range(20)]}, protocol=2))
    monkeypatch.setattr(tvd.CIFAR100, 'train_list', [['train', md5(base/'train')]])
    monkeypatch.setattr(tvd.CIFAR100, 'test_list', [['test', md5(base/'test')]])
    monkeypatch.setattr(tvd.CIFAR100, 'meta', {**tvd.CIFAR100.meta, 'md5': md5(base/'meta')})
    # Flowers-102: jpg/image_NNNNN.jpg, imagelabels.mat (1-based), setid.mat (train / val / test image ids)
    base = root/'flowers-102'
    labels = np.array(ytr + yte) + 1
    for i in range(len(labels)): jpg(base/'jpg'/f'image_{i + 1:05d}.jpg')
    sio.savemat(base/'imagelabels.mat', {'labels': labels[None]})
    ids = np.arange(1, len(labels) + 1)
    sio.savemat(base/'setid.mat', {'trnid': ids[:n_train // 2][None], 'valid': ids[n_train // 2:n_train][None],
                                   'tstid': ids[n_train:][None]})
    monkeypatch.setattr(tvd.Flowers102, '_file_dict', {**tvd.Flowers102._file_dict,
                        'label': ('imagelabels.mat', md5(base/'imagelabels.mat')), 'setid': ('setid.mat', md5(base/'setid.mat'))})
    # FGVC-Aircraft: data/variants.txt, images_variant_{trainval,test}.txt, images/<id>.jpg
    base = root/'fgvc-aircraft-2013b'/'data'; base.mkdir(parents=True)
    variants = [f'Boeing 7{i}7' for i in range(n_cls)]
    (base/'variants.txt').write_text('\n'.join(variants) + '\n')
    k = 1000000
    for split, ys in (('trainval', ytr), ('test', yte)):
        lines = []
        for y in ys: k += 1; jpg(base/'images'/f'{k:07d}.jpg'); lines.append(f'{k:07d} {variants[y]}')
        (base/f'images_variant_{split}.txt').write_text('\n'.join(lines) + '\n')
    # Caltech-101 and -256: one folder of jpgs per category (a stratified 20 % becomes the validation set)
    n_cat = 10                                  # 30 images: 6 in the validation split, more than k = 5 of the k-NN
    for c in range(n_cls):
        for i in range(n_cat): jpg(root/'caltech101'/'101_ObjectCategories'/f'cat{c}'/f'image_{i + 1:04d}.jpg')
    jpg(root/'caltech101'/'101_ObjectCategories'/'BACKGROUND_Google'/'image_0001.jpg')
    (root/'caltech101'/'Annotations').mkdir(parents=True)
    for c in range(n_cls):
        for i in range(n_cat): jpg(root/'caltech256'/'256_ObjectCategories'/f'{c + 1:03d}.cat{c}'/f'{c + 1:03d}_{i + 1:04d}.jpg')
    # Stanford Cars: devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat, images
    base = root/'stanford_cars'; (base/'devkit').mkdir(parents=True)
    sio.savemat(base/'devkit'/'cars_meta.mat', {'class_names': np.array([f'car {i}' for i in range(n_cls)], dtype=object)[None]})
    for split, ys in (('train', ytr), ('test', yte)):
        rec = np.array([(1, 1, 30, 30, y + 1, f'{i + 1:05d}.jpg') for i, y in enumerate(ys)],
                       dtype=[(n, object) for n in ('bbox_x1', 'bbox_y1', 'bbox_x2', 'bbox_y2', 'class', 'fname')])
        for i in range(len(ys)): jpg(base/f'cars_{split}'/f'{i + 1:05d}.jpg')
        mat = base/'devkit'/'cars_train_annos.mat' if split == 'train' else base/'cars_test_annos_withlabels.mat'
        sio.savemat(mat, {'annotations': rec[None]})


def test_paper_suite_on_fixtures(tmp_path, monkeypatch, capsys):
    "The whole `paper` grid (7 datasets × 7 objectives, one seed) for one tiny epoch on the CPU, through `main`."
    write_fixtures(tmp_path/'data', monkeypatch)
    torch.set_num_threads(1)
    out = tmp_path/'paper'
    args = ['suite', 'paper', '--out', str(out), '--data-path', str(tmp_path/'data'), '--seeds', '0', '--device', 'cpu',
            '--workers', '0', '--no-bar', '--set', 'epochs=1', '--set', 'probe_epochs=1', '--set', 'size=32',
            '--set', 'bs=4', '--set', 'balanced=2', '--save-model', 'none']
    assert main(args) == 0, capsys.readouterr().out
    rows = read_rows(out/'results.jsonl')
    assert sorted((r['dataset'], r['objective']) for r in rows) == sorted(
        (d, o) for d in PAPER.datasets for o in PAPER.objectives)
    for r in rows:
        assert r['encoder'] == 'efficientnet_b0' and r['config']['dim'] == 128 and r['config']['augment']
        assert r['config']['views'] == (2 if 'supcon' in r['objective'] else 1)
        assert all(r[m] is not None and math.isfinite(r[m]) for m in ('top1', 'knn', 'nmi', 'ari', 'silhouette'))
        assert r['amp'] is False                                       # mixed precision is for CUDA only
    assert main(['report', str(out)]) == 0
    md = (out/'report.md').read_text()
    assert '| objective | cifar10 | cifar100 | stanford_cars | caltech101 | caltech256 | fgvc_aircraft | flowers102 | mean |' in md


def test_paper_suite_fills_every_dataset():
    "Every run of the paper suite can fill its class-balanced batches (CIFAR-10's 10 classes cannot give 128 // 4 = 32)."
    for c in PAPER.configs(seeds=(0,)):
        assert c.bs % c.balanced == 0 and c.bs // c.balanced <= N_CLASSES[c.dataset], (c.dataset, c.bs, c.balanced)
    assert {c.dataset: c.balanced for c in PAPER.configs(seeds=(0,))} == {d: 16 if d == 'cifar10' else 4 for d in PAPER.datasets}


def test_paper_dry_run_accepts_every_dataset(capsys, tmp_path):
    assert main(['suite', 'paper', '--dry-run', '--out', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert '| cifar10 | efficientnet_b0 | 7 | 3 |' in out and 'balanced=16' in out and '147 runs' in out


def test_paper_run_folder_on_fixtures(tmp_path, monkeypatch):
    "An image-dataset run leaves a run folder whose models load back and give the embeddings the run was evaluated on."
    from silhouette_nb.runner import load_run
    from silhouette_nb.data import get_dls
    from silhouette_nb.learner import get_embeddings
    from silhouette_nb.silhouette import silhouette_score
    write_fixtures(tmp_path/'data', monkeypatch)
    torch.set_num_threads(1)
    out = tmp_path/'out'
    assert main(['run', '--dataset', 'cifar10', '--encoder', 'efficientnet_b0', '--objective', 'ce+sil', '--epochs', '2',
                 '--bs', '4', '--size', '32', '--dim', '16', '--data-path', str(tmp_path/'data'), '--workers', '0',
                 '--device', 'cpu', '--out', str(out), '--no-bar']) == 0
    (row,) = read_rows(out/'results.jsonl')
    run = out/'runs'/row['key']
    assert sorted(p.name for p in run.iterdir()) == ['config.json', 'history.jsonl', 'model_best.pkl', 'model_last.pkl', 'row.json']
    hist = [json.loads(l) for l in (run/'history.jsonl').read_text().splitlines()]
    assert [h['epoch'] for h in hist] == [1, 2] and hist[-1]['knn'] == row['knn']
    learn = load_run(run)
    dls = get_dls('cifar10', bs=4, size=32, path=tmp_path/'data', num_workers=0, device='cpu')
    e, y = get_embeddings(learn, dls.valid)
    assert silhouette_score(torch.nn.functional.normalize(e, dim=1), y).item() == row['silhouette']


def test_paper_smoke_on_fixtures(tmp_path, monkeypatch, capsys):
    "`paper-smoke` (2 datasets × 7 objectives) through `main` on the fixtures, its estimate printed and in the report."
    from silhouette_nb.config import PAPER_SMOKE
    write_fixtures(tmp_path/'data', monkeypatch)
    torch.set_num_threads(1)
    out = tmp_path/'smoke'
    sets = ['n_train=none', 'n_valid=none', 'size=32', 'bs=4', 'balanced=2']   # the fixtures: 12 / 24 training images
    args = ['suite', 'paper-smoke', '--out', str(out), '--data-path', str(tmp_path/'data'), '--device', 'cpu',
            '--workers', '0', '--no-bar', '--save-model', 'none'] + [a for s in sets for a in ('--set', s)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    rows = read_rows(out/'results.jsonl')
    assert sorted((r['dataset'], r['objective']) for r in rows) == sorted(
        (d, o) for d in ('cifar10', 'caltech101') for o in PAPER.objectives)
    assert all(r['suite'] == 'paper-smoke' and r['config']['epochs'] == 1 and r['sec_per_epoch'] > 0 for r in rows)
    assert {r['config']['probe_epochs'] for r in rows if r['objective'] == 'supcon'} == {1}
    # size=32 everywhere: only the 42 CIFAR runs of `paper` have a measured rate, and the line says so
    assert 'expected training time of the full `paper` suite for 42 of its 147 runs' in printed
    assert main(['report', str(out)]) == 0
    md = (out/'report.md').read_text()
    assert '## Expected time of the full `paper` suite' in md and '| cifar100 | 32 | 50000 | 21 |' in md


def test_paper_smoke_dry_run(capsys, tmp_path):
    assert main(['suite', 'paper-smoke', '--dry-run', '--out', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert '| caltech101 | efficientnet_b0 | 7 | 1 |' in out and 'n_train=1024' in out and '14 runs' in out


def test_paper_suites_let_cudnn_choose_and_store_channels_last():
    "Issue 14: the GPU suites ran with cuDNN deterministic, benchmarking off, and channels-first convolutions."
    for name in ('paper', 'paper-smoke'):
        assert all(not c.deterministic and c.channels_last for c in SUITES[name].configs()), name
    assert all(c.deterministic and not c.channels_last for c in QUICK.configs())


def test_a_channels_last_run_trains_on_the_cpu():
    torch.set_num_threads(1)
    m = train_and_evaluate(RunConfig('digits', 'cnn', 'ce', epochs=1, n_train=300, channels_last=True, deterministic=False),
                           device='cpu')
    assert m['top1'] > 0.3 and torch.backends.cudnn.benchmark
    train_and_evaluate(RunConfig('digits', 'mlp', 'ce', epochs=1, n_train=300), device='cpu')
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
