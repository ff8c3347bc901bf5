"""Tests of `silhouette_nb.data`: the idx reader, the loaders of the paper's seven torchvision datasets on tiny
fixtures written here in each dataset's real on-disk format, the missing-dataset errors, the class-balanced sampler,
the multi-view wrapper, and digits / MNIST-1D / Fashion-MNIST `DataLoaders` end to end.

About checksums: torchvision checks the MD5 of some files it reads (CIFAR's pickles, Flowers' two .mat files) against
the real files' digests, which no fixture can match. The tests do not switch those checks off: they point the
dataset class's own checksum table (`train_list`, `test_list`, `meta`, `_file_dict`) at the fixture's digests with
`monkeypatch`, so torchvision's `_check_integrity` still runs and still rejects a file that differs (tested below).
"""
import gzip, hashlib, pickle, random, struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import torch
from PIL import Image
from torchvision import datasets as tvd

from silhouette_nb import data as D
from silhouette_nb.data import (BalancedDL, MultiView, TensorClassDataset, balanced_batch_idxs, get_dls,
                                image_dsets, image_tfms, load_fashion_mnist, read_idx, stratified_split)

RNG = np.random.default_rng(0)


def md5(p): return hashlib.md5(Path(p).read_bytes()).hexdigest()


def jpg(path, size=(40, 30), grey=False):
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) if grey else (size[1], size[0], 3)
    Image.fromarray(RNG.integers(0, 255, shape, dtype=np.uint8)).save(path)


def dls_kw(**kw): return dict(bs=2, size=32, num_workers=0, device='cpu', **kw)


# ---------------------------------------------------------------- fixture writers, one per on-disk format
def write_cifar10(root, monkeypatch, n_per_batch=4, n_test=6):
    "`cifar-10-batches-py/`: five training pickles, `test_batch`, `batches.meta` (Python pickles of dicts)."
    base = Path(root)/'cifar-10-batches-py'; base.mkdir(parents=True)
    labels = {}
    for nm, n in [(f'data_batch_{i}', n_per_batch) for i in range(1, 6)] + [('test_batch', n_test)]:
        y = RNG.integers(0, 10, n).tolist(); labels[nm] = y
        d = {'batch_label': nm, 'labels': y, 'data': RNG.integers(0, 255, (n, 3072), dtype=np.uint8),
             'filenames': [f'{nm}_{i}.png' for i in range(n)]}
        (base/nm).write_bytes(pickle.dumps(d, protocol=2))
    names = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
    (base/'batches.meta').write_bytes(pickle.dumps({'label_names': names, 'num_cases_per_batch': n_per_batch,
                                                     'num_vis': 3072}, protocol=2))
    monkeypatch.setattr(tvd.CIFAR10, 'train_list', [[f'data_batch_{i}', md5(base/f'data_batch_{i}')] for i in range(1, 6)])
    monkeypatch.setattr(tvd.CIFAR10, 'test_list', [['test_batch', md5(base/'test_batch')]])
    monkeypatch.setattr(tvd.CIFAR10, 'meta', {**tvd.CIFAR10.meta, 'md5': md5(base/'batches.meta')})
    train = sum((labels[f'data_batch_{i}'] for i in range(1, 6)), [])
    return train, labels['test_batch'], names


def write_cifar100(root, monkeypatch, n_train=12, n_test=5):
    "`cifar-100-python/`: `train`, `test` and `meta` pickles with fine and coarse labels."
    base = Path(root)/'cifar-100-python'; base.mkdir(parents=True)
    ys = {}
    for nm, n in [('train', n_train), ('test', n_test)]:
        y = RNG.integers(0, 100, n).tolist(); ys[nm] = y
        d = {'filenames': [f'{i}.png' for i in range(n)], 'batch_label': nm, 'fine_labels': y,
             'coarse_labels': [v // 5 for v in y], 'data': RNG.integers(0, 255, (n, 3072), dtype=np.uint8)}
        (base/nm).write_bytes(pickle.dumps(d, protocol=2))
    names = [f'fine{i}' for i in range(100)]
    (base/'meta').write_bytes(pickle.dumps({'fine_label_names': names,
                                            'coarse_label_names': [f'coarse{i}' for i in range(20)]}, protocol=2))
    monkeypatch.setattr(tvd.CIFAR100, 'train_list', [['train', md5(base/'train')]])
    monkeypatch.setattr(tvd.CIFAR100, 'test_list', [['test', md5(base/'test')]])
    monkeypatch.setattr(tvd.CIFAR100, 'meta', {**tvd.CIFAR100.meta, 'md5': md5(base/'meta')})
    return ys['train'], ys['test'], names


def write_flowers102(root, monkeypatch):
    "`flowers-102/`: `jpg/image_00001.jpg...`, `imagelabels.mat` (1-based labels), `setid.mat` (1-based image ids)."
    base = Path(root)/'flowers-102'
    labels = np.array([1, 1, 2, 2, 3, 3, 1, 2, 3, 1, 2, 3])          # image i+1 has label labels[i]
    for i in range(len(labels)): jpg(base/'jpg'/f'image_{i + 1:05d}.jpg')
    sio.savemat(base/'imagelabels.mat', {'labels': labels[None]})
    sio.savemat(base/'setid.mat', {'trnid': np.array([[1, 3, 5]]), 'valid': np.array([[2, 4, 6]]),
                                   'tstid': np.array([[7, 8, 9, 10, 11, 12]])})
    monkeypatch.setattr(tvd.Flowers102, '_file_dict', {**tvd.Flowers102._file_dict,
                        'label': ('imagelabels.mat', md5(base/'imagelabels.mat')),
                        'setid': ('setid.mat', md5(base/'setid.mat'))})
    lab = lambda ids: [int(labels[i - 1]) - 1 for i in ids]
    return lab([1, 3, 5]) + lab([2, 4, 6]), lab([7, 8, 9, 10, 11, 12])


def write_fgvc_aircraft(root):
    "`fgvc-aircraft-2013b/data/`: `variants.txt`, `images_variant_{trainval,test}.txt`, `images/<id>.jpg`."
    base = Path(root)/'fgvc-aircraft-2013b'/'data'; base.mkdir(parents=True)
    variants = ['707-320', 'Boeing 717', 'A340-500']                 # names may contain spaces
    (base/'variants.txt').write_text('\n'.join(variants) + '\n')
    split = {'trainval': [0, 1, 2, 0, 1, 2, 0], 'test': [2, 1, 0, 2]}
    k = 1000000
    for s, ys in split.items():
        lines = []
        for y in ys:
            k += 1; jpg(base/'images'/f'{k:07d}.jpg'); lines.append(f'{k:07d} {variants[y]}')
        (base/f'images_variant_{s}.txt').write_text('\n'.join(lines) + '\n')
    return split['trainval'], split['test'], variants


def write_caltech101(root, n=(3, 5, 4)):
    "`caltech101/101_ObjectCategories/<class>/image_0001.jpg...` with the `BACKGROUND_Google` folder torchvision drops."
    base = Path(root)/'caltech101'/'101_ObjectCategories'
    cats = ['Faces', 'accordion', 'airplanes']
    for c, k in zip(cats, n):
        for i in range(k): jpg(base/c/f'image_{i + 1:04d}.jpg', grey=(i == 0))   # Caltech has greyscale images
    jpg(base/'BACKGROUND_Google'/'image_0001.jpg')
    (Path(root)/'caltech101'/'Annotations'/'Faces_2').mkdir(parents=True)      # unused for category targets
    return cats, list(n)


def write_caltech256(root, n=(4, 3, 5)):
    "`caltech256/256_ObjectCategories/NNN.name/NNN_0001.jpg...`."
    base = Path(root)/'caltech256'/'256_ObjectCategories'
    cats = ['001.ak47', '002.american-flag', '257.clutter']
    for j, (c, k) in enumerate(zip(cats, n)):
        for i in range(k): jpg(base/c/f'{j + 1:03d}_{i + 1:04d}.jpg')
        (base/c/'notes.txt').write_text('not an image')                # torchvision counts only .jpg files
    return cats, list(n)


def write_stanford_cars(root):
    "`stanford_cars/`: `devkit/cars_meta.mat`, `devkit/cars_train_annos.mat`, `cars_test_annos_withlabels.mat`, images."
    base = Path(root)/'stanford_cars'; (base/'devkit').mkdir(parents=True)
    names = ['AM General Hummer SUV 2000', 'Acura RL Sedan 2012', 'Acura TL Sedan 2012']
    sio.savemat(base/'devkit'/'cars_meta.mat', {'class_names': np.array(names, dtype=object)[None]})
    split = {'train': [1, 2, 3, 1, 2, 3], 'test': [3, 2, 1, 1]}       # 1-based, as in the devkit
    for s, ys in split.items():
        rec = np.array([(10, 10, 30, 20, c, f'{i + 1:05d}.jpg') for i, c in enumerate(ys)],
                       dtype=[('bbox_x1', object), ('bbox_y1', object), ('bbox_x2', object), ('bbox_y2', object),
                              ('class', object), ('fname', object)])
        for i in range(len(ys)): jpg(base/f'cars_{s}'/f'{i + 1:05d}.jpg')
        mat = base/'devkit'/'cars_train_annos.mat' if s == 'train' else base/'cars_test_annos_withlabels.mat'
        sio.savemat(mat, {'annotations': rec[None]})
    return [c - 1 for c in split['train']], [c - 1 for c in split['test']], names


# ---------------------------------------------------------------- the seven datasets on their fixtures
def check_dls(dls, train_labels, valid_labels, c, shape=(3, 32, 32)):
    assert dls.c == c and len(dls.vocab) == c
    assert dls.train_ds.targets.tolist() == train_labels
    assert dls.valid_ds.targets.tolist() == valid_labels
    assert len(dls.train_ds) == len(train_labels) and len(dls.valid_ds) == len(valid_labels)
    x, y = dls.valid.one_batch()
    assert x.shape == (min(2, len(valid_labels)),) + shape and x.dtype == torch.float32
    assert y.tolist() == valid_labels[:2]
    x, y = dls.train.one_batch()
    assert x.shape == (2,) + shape and torch.isfinite(x).all()


def test_cifar10(tmp_path, monkeypatch):
    tr, va, names = write_cifar10(tmp_path, monkeypatch)
    dls = get_dls('cifar10', path=tmp_path, **dls_kw())
    check_dls(dls, tr, va, 10)
    assert dls.vocab == names
    raw, y = dls.valid_ds.ds[0]
    assert raw.size == (32, 32) and y == va[0]


def test_cifar10_checksum_still_checked(tmp_path, monkeypatch):
    write_cifar10(tmp_path, monkeypatch)
    (tmp_path/'cifar-10-batches-py'/'test_batch').write_bytes(b'corrupted')
    with pytest.raises(FileNotFoundError, match='corrupted'): image_dsets('cifar10', path=tmp_path)


def test_cifar100(tmp_path, monkeypatch):
    tr, va, names = write_cifar100(tmp_path, monkeypatch)
    dls = get_dls('cifar100', path=tmp_path, **dls_kw())
    check_dls(dls, tr, va, 100)
    assert dls.vocab == names


def test_flowers102_train_plus_val(tmp_path, monkeypatch):
    tr, va = write_flowers102(tmp_path, monkeypatch)
    dls = get_dls('flowers102', path=tmp_path, **dls_kw())
    check_dls(dls, tr, va, 102)                                       # torchvision's 102 class names
    assert dls.vocab[0] == 'pink primrose'


def test_fgvc_aircraft(tmp_path):
    tr, va, names = write_fgvc_aircraft(tmp_path)
    dls = get_dls('fgvc_aircraft', path=tmp_path, **dls_kw())
    check_dls(dls, tr, va, 3)
    assert dls.vocab == names


@pytest.mark.parametrize('name,writer', [('caltech101', write_caltech101), ('caltech256', write_caltech256)])
def test_caltech_stratified_split(tmp_path, name, writer):
    cats, n = writer(tmp_path)
    tr, va = image_dsets(name, path=tmp_path, valid_pct=0.25, seed=0)
    assert tr.vocab == cats and tr.c == 3                            # BACKGROUND_Google is not a class
    labels = torch.tensor(sum(([i] * k for i, k in enumerate(n)), []))
    assert len(tr) + len(va) == len(labels) and set(tr.idxs.tolist()).isdisjoint(va.idxs.tolist())
    assert torch.equal(torch.cat([tr.targets, va.targets]).sort().values, labels)
    assert len(va) == round(0.25 * len(labels)) and len(va.targets.unique()) == 3   # every class held out
    dls = get_dls(name, path=tmp_path, valid_pct=0.25, **dls_kw())
    assert dls.c == 3
    assert dls.train.one_batch()[0].shape == (2, 3, 32, 32)          # greyscale images come out RGB
    x = torch.stack([dls.valid_ds[i][0] for i in range(len(dls.valid_ds))])
    assert x.shape == (len(va), 3, 32, 32)


def test_stanford_cars(tmp_path):
    tr, va, names = write_stanford_cars(tmp_path)
    dls = get_dls('stanford_cars', path=tmp_path, **dls_kw())
    check_dls(dls, tr, va, 3)
    assert dls.vocab == names


def test_image_views_balanced_subset(tmp_path, monkeypatch):
    "Two AutoAugmented views and balanced batches on the CIFAR-100 fixture, after a stratified subset."
    write_cifar100(tmp_path, monkeypatch, n_train=40, n_test=8)
    dls = get_dls('cifar100', path=tmp_path, bs=4, views=2, balanced=2, n_train=30, n_valid=6,
                  num_workers=0, device='cpu')
    assert len(dls.train_ds) == 30 and len(dls.valid_ds) == 6
    x, y = dls.train.one_batch()
    assert x.shape == (4, 2, 3, 32, 32)
    assert not torch.equal(x[:, 0], x[:, 1])                          # independent augmentations
    assert sorted(torch.bincount(y).tolist())[-2:] == [2, 2] and len(y.unique()) == 2
    assert dls.valid.one_batch()[0].shape == (4, 3, 32, 32)           # validation: one plain view


def test_image_holdout(tmp_path, monkeypatch):
    "holdout on an image dataset: the validation set is carved from the training images, the official test set is dls[2]."
    write_cifar100(tmp_path, monkeypatch, n_train=40, n_test=8)
    full = get_dls('cifar100', path=tmp_path, bs=4, num_workers=0, device='cpu')
    dls = get_dls('cifar100', path=tmp_path, bs=4, holdout=10, n_train=20, num_workers=0, device='cpu')
    assert (len(dls.train_ds), len(dls.valid_ds), len(dls[2].dataset)) == (20, 10, 8)
    assert torch.equal(dls[2].dataset.targets, full.valid_ds.targets)          # the official test set, untouched
    def base_idxs(ds):   # indices into the torchvision dataset, through nested subsets
        i = ds.idxs
        while isinstance(ds.ds, D.LabelledSubset): ds = ds.ds; i = ds.idxs[i]
        return set(i.tolist())
    tr, va = base_idxs(dls.train_ds.ds), base_idxs(dls.valid_ds.ds)
    assert len(tr) == 20 and len(va) == 10 and not tr & va                    # carved, disjoint from training
    assert dls[2].one_batch()[0].shape == (4, 3, 32, 32) and dls.valid.one_batch()[0].shape == (4, 3, 32, 32)


def test_image_tfms_policy_and_sizes():
    from torchvision import transforms as T
    im = Image.fromarray(RNG.integers(0, 255, (50, 70, 3), dtype=np.uint8))
    cim = Image.fromarray(RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    for cifar, size, out in [(True, None, 32), (False, None, 224), (False, 64, 64), (True, 48, 48)]:
        for train in (True, False):
            assert image_tfms(cifar, train, size)(cim if cifar else im).shape == (3, out, out)
    pol = lambda t: [o.policy for o in t.transforms if isinstance(o, T.AutoAugment)]
    assert pol(image_tfms(True, True)) == [T.AutoAugmentPolicy.CIFAR10]
    assert pol(image_tfms(False, True)) == [T.AutoAugmentPolicy.IMAGENET]
    assert pol(image_tfms(False, False)) == [] and pol(image_tfms(True, True, autoaugment=False)) == []


# ---------------------------------------------------------------- missing datasets
@pytest.mark.parametrize('name,where', [
    ('cifar10', 'cifar-10-batches-py'), ('cifar100', 'cifar-100-python'), ('flowers102', 'flowers-102'),
    ('fgvc_aircraft', 'fgvc-aircraft-2013b'), ('caltech101', 'caltech101/101_ObjectCategories'),
    ('caltech256', 'caltech256/256_ObjectCategories')])
def test_missing_image_dataset(tmp_path, name, where):
    with pytest.raises(FileNotFoundError) as e: get_dls(name, path=tmp_path, num_workers=0)
    msg = str(e.value)
    assert str(tmp_path/where) in msg and 'download=True' in msg and 'path=' in msg


def test_missing_stanford_cars(tmp_path):
    with pytest.raises(FileNotFoundError, match='by hand') as e: get_dls('stanford_cars', path=tmp_path)
    assert str(tmp_path/'stanford_cars') in str(e.value)


def test_missing_fashion_mnist(tmp_path):
    with pytest.raises(FileNotFoundError) as e: load_fashion_mnist(tmp_path/'fm')
    msg = str(e.value)
    for s in (str(tmp_path/'fm'), 'train-images-idx3-ubyte', 'apt-get install dataset-fashion-mnist',
              'path=', 'download=True'):
        assert s in msg


def test_missing_default_fashion_mnist_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(D, 'FASHION_MNIST_DIR', tmp_path/'nope')
    monkeypatch.setenv('SILHOUETTE_NB_DATA', str(tmp_path/'cache'))
    with pytest.raises(FileNotFoundError, match='nope') as e: get_dls('fashion_mnist')
    assert str(tmp_path/'cache') in str(e.value)


def test_unknown_name():
    with pytest.raises(ValueError, match='valid names: digits, mnist1d, fashion_mnist, cifar10, cifar100'):
        get_dls('imagenet')


# ---------------------------------------------------------------- idx files and Fashion-MNIST
def idx_bytes(a):
    "An idx file written by hand (not with `write_idx`): magic 0 0 0x08 ndim, big-endian dims, uint8 data."
    return struct.pack('>BBBB', 0, 0, 0x08, a.ndim) + struct.pack(f'>{a.ndim}I', *a.shape) + a.astype(np.uint8).tobytes()


def test_read_idx_gz(tmp_path):
    a = RNG.integers(0, 255, (5, 28, 28), dtype=np.uint8)
    (tmp_path/'x-idx3-ubyte.gz').write_bytes(gzip.compress(idx_bytes(a)))
    (tmp_path/'x-idx3-ubyte').write_bytes(idx_bytes(a))
    for f in ('x-idx3-ubyte.gz', 'x-idx3-ubyte'):
        b = read_idx(tmp_path/f)
        assert b.dtype == np.uint8 and b.shape == (5, 28, 28) and np.array_equal(a, b)
    (tmp_path/'int').write_bytes(struct.pack('>BBBBI', 0, 0, 0x0C, 1, 3) + np.array([1, -2, 70000], '>i4').tobytes())
    assert read_idx(tmp_path/'int').tolist() == [1, -2, 70000]
    (tmp_path/'short').write_bytes(idx_bytes(a)[:-5])
    with pytest.raises(ValueError, match='header says shape'): read_idx(tmp_path/'short')


def write_fashion(folder, n_train=50, n_test=20):
    folder.mkdir(parents=True, exist_ok=True)
    arrs = {}
    for split, n in (('train', n_train), ('t10k', n_test)):
        y = np.arange(n) % 10
        x = (RNG.integers(0, 255, (n, 28, 28)) // 3 + 25 * y[:, None, None]).astype(np.uint8)
        (folder/f'{split}-images-idx3-ubyte.gz').write_bytes(gzip.compress(idx_bytes(x)))
        (folder/f'{split}-labels-idx1-ubyte.gz').write_bytes(gzip.compress(idx_bytes(y)))
        arrs[split] = x, y
    return arrs


def test_fashion_mnist_from_a_folder(tmp_path):
    arrs = write_fashion(tmp_path/'fm')
    xt, yt, xv, yv, vocab = load_fashion_mnist(tmp_path/'fm')
    assert xt.shape == (50, 1, 28, 28) and xv.shape == (20, 1, 28, 28) and len(vocab) == 10
    assert np.array_equal(xt[:, 0].numpy(), arrs['train'][0]) and yt.tolist() == arrs['train'][1].tolist()
    dls = get_dls('fashion_mnist', path=tmp_path/'fm', bs=10, views=2, device='cpu')
    x, y = dls.train.one_batch()
    assert x.shape == (10, 2, 1, 28, 28) and dls.c == 10
    assert abs(dls.train_ds.ds.x.mean().item()) < 1e-4 and abs(dls.train_ds.ds.x.std().item() - 1) < 1e-4


def test_fashion_mnist_torchvision_layout(tmp_path):
    write_fashion(tmp_path/'FashionMNIST'/'raw')                     # where torchvision's download puts them
    assert load_fashion_mnist(tmp_path)[0].shape == (50, 1, 28, 28)


def test_fashion_mnist_debian_package():
    if not (D.FASHION_MNIST_DIR/'train-images-idx3-ubyte.gz').exists():
        pytest.skip('apt package dataset-fashion-mnist not installed')
    xt, yt, xv, yv, _ = load_fashion_mnist()
    assert xt.shape == (60000, 1, 28, 28) and xv.shape == (10000, 1, 28, 28)
    assert torch.bincount(yt).tolist() == [6000] * 10 and torch.bincount(yv).tolist() == [1000] * 10


# ---------------------------------------------------------------- the balanced sampler
def balanced_ok(batches, k, m):
    for y in batches:
        counts = torch.bincount(y)
        assert sorted(counts[counts > 0].tolist()) == [m] * k, y


@pytest.mark.parametrize('C,k,m,seed', [(5, 3, 2, 0), (10, 10, 4, 1), (7, 2, 8, 2), (30, 16, 2, 3)])
def test_balanced_batch_idxs(C, k, m, seed):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(m, 3 * m + 5, (C,), generator=g)          # imbalanced, every class >= m
    y = torch.repeat_interleave(torch.arange(C), counts)[torch.randperm(int(counts.sum()), generator=g)]
    idx = balanced_batch_idxs(y, k, m, n_batches=25, generator=g)
    assert idx.shape == (25, k * m)
    balanced_ok(y[idx], k, m)
    assert all(len(r.unique()) == k * m for r in idx)                 # no sample twice in a batch
    # within an epoch a class is walked through before its members repeat
    per_class = {}
    for r in idx.view(-1, m): per_class.setdefault(int(y[r[0]]), []).extend(r.tolist())
    for c, members in per_class.items():
        n = int(counts[c]); first = members[:n]
        assert len(set(first)) == len(first)


def test_balanced_small_class_repeats_and_errors():
    y = torch.tensor([0, 0, 0, 0, 1, 2, 2, 2])
    idx = balanced_batch_idxs(y, 3, 2, 5, torch.Generator().manual_seed(0))
    balanced_ok(y[idx], 3, 2)                                         # class 1 (one member) repeats
    with pytest.raises(ValueError, match='only 3 classes'): balanced_batch_idxs(y, 4, 2, 1)
    ds = TensorClassDataset(torch.randn(8, 2), y, vocab='abc')
    with pytest.raises(ValueError, match='multiple of m'): BalancedDL(ds, bs=5, m=2, num_workers=0)
    with pytest.raises(ValueError, match='needs 4 classes'): BalancedDL(ds, bs=8, m=2, num_workers=0)


def test_balanced_dl_seeded_and_with_workers():
    y = torch.arange(200) % 8
    ds = TensorClassDataset(torch.randn(200, 3), y, vocab=range(8))
    run = lambda seed, nw=0: [b[1].tolist() for b in BalancedDL(ds, bs=12, m=3, seed=seed, num_workers=nw, device='cpu')]
    a = run(0)
    assert len(a) == 200 // 12 and a == run(0) and a != run(1)
    balanced_ok([torch.tensor(b) for b in a], 4, 3)
    w = run(0, nw=2)                                                  # order decided in the main process
    assert sorted(map(tuple, w)) == sorted(map(tuple, a))
    balanced_ok([torch.tensor(b) for b in w], 4, 3)


# ---------------------------------------------------------------- multi-view wrapper
class Counting(torch.utils.data.Dataset):
    def __init__(self, n): self.n, self.reads, self.targets = n, 0, torch.arange(n) % 3
    def __len__(self): return self.n
    def __getitem__(self, i): self.reads += 1; return torch.full((1, 6, 6), float(i)), int(self.targets[i])


def test_multiview_reads_once_and_augments_independently():
    ds = Counting(10)
    mv = MultiView(ds, D.RandomShift(1, noise=0.5), views=4)
    x, y = mv[7]
    assert ds.reads == 1 and x.shape == (4, 1, 6, 6) and y == 7 % 3
    assert len({tuple(v.flatten().tolist()) for v in x}) == 4
    assert (x - 7).abs().mean() < 1                                   # noise around the original value
    assert torch.equal(mv.targets, ds.targets)                        # attributes of the wrapped dataset
    with pytest.raises(AttributeError): mv.nothing_here
    assert pickle.loads(pickle.dumps(MultiView(TensorClassDataset(torch.zeros(2, 1), torch.zeros(2), 'a'), None, 2)))[0][0].shape == (2, 1)


def test_stratified_split_properties():
    g = torch.Generator().manual_seed(0)
    y = torch.repeat_interleave(torch.arange(6), torch.tensor([50, 30, 10, 5, 3, 2]))
    for n in (1, 7, 25, 100):
        a, b = stratified_split(y, n, seed=n)
        assert len(a) == n and len(a) + len(b) == len(y) and torch.equal(torch.cat([a, b]).sort().values, torch.arange(100))
        share = torch.bincount(y[a], minlength=6).float()
        assert (share - n * torch.bincount(y).float() / 100).abs().max() <= 1.0   # proportional to +-1


# ---------------------------------------------------------------- digits and MNIST-1D end to end
def test_digits_end_to_end():
    dls = get_dls('digits', bs=64, seed=3, device='cpu')
    assert (len(dls.train_ds), len(dls.valid_ds), dls.c) == (1438, 359, 10)
    ys, n = [], 0
    for x, y in dls.train:
        assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32; ys.append(y); n += len(y)
    assert n == 1438 // 64 * 64                                       # last incomplete batch dropped
    xs, yv = zip(*dls.valid)
    assert torch.cat(yv).tolist() == dls.valid_ds.targets.tolist()   # validation in order, unaugmented
    assert torch.equal(torch.cat(xs), dls.valid_ds.ds.x)
    plain = get_dls('digits', bs=64, seed=3, augment=False, device='cpu')
    x, _ = plain.train.one_batch()
    assert any(torch.equal(x[0], r) for r in plain.train_ds.ds.x)    # no augmentation when asked


def test_mnist1d_end_to_end_offline(monkeypatch):
    import requests
    def no_network(*a, **k): raise AssertionError('MNIST-1D must not download')
    monkeypatch.setattr(requests, 'get', no_network)
    D._mnist1d_arrays.cache_clear()
    np.random.seed(123); random.seed(123)
    state = np.random.get_state()[1].copy(), random.getstate()
    D.load_mnist1d()                                                  # generated here: the generator re-seeds...
    assert np.array_equal(np.random.get_state()[1], state[0]) and random.getstate() == state[1]   # ...we restore
    dls = get_dls('mnist1d', bs=100, views=2, balanced=10, device='cpu')
    assert (len(dls.train_ds), len(dls.valid_ds), dls.c) == (4000, 1000, 10)
    assert len(dls.train) == 40
    x, y = dls.train.one_batch()
    assert x.shape == (100, 2, 1, 40) and torch.bincount(y).tolist() == [10] * 10
    assert dls.valid.one_batch()[0].shape == (100, 1, 40)
    # a second, independent generation gives the same data, and the training set is it, standardised
    D._mnist1d_arrays.cache_clear()
    raw = D.load_mnist1d()[0]
    assert torch.allclose(dls.train_ds.ds.x, (raw - raw.mean()) / raw.std(), atol=1e-5)


# ---------------------------------------------------------------- batches to the device: bytes, pinned memory, shards
class CopiedBytes(__import__('torch.utils._python_dispatch', fromlist=['TorchDispatchMode']).TorchDispatchMode):
    "Bytes read by copies to another device (here the `meta` device: what would travel to a GPU)."
    def __init__(self): super().__init__(); self.n = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket.__name__ == '_to_copy' and kwargs.get('device') not in (None, args[0].device):
            self.n += args[0].numel() * args[0].element_size()
        return func(*args, **kwargs)


def test_image_batches_travel_as_bytes_same_values(tmp_path, monkeypatch):
    "Images are uint8 until the device; after `NormalizeOnDevice` the values are those of per-image ToTensor + Normalize."
    write_cifar10(tmp_path, monkeypatch)
    dls = get_dls('cifar10', path=tmp_path, bs=6, num_workers=0, device='cpu')
    raw = dls.valid_ds.ds
    assert dls.valid_ds[0][0].dtype == torch.uint8
    per_image = torch.stack([image_tfms(True, False, normalize=True)(raw[i][0]) for i in range(6)])
    x, y = dls.valid.one_batch()
    assert x.dtype == torch.float32 and torch.equal(x, per_image)
    xt, _ = dls.train.one_batch()
    assert xt.dtype == torch.float32 and torch.isfinite(xt).all()


def test_bytes_per_two_view_224_step(tmp_path, monkeypatch):
    "A two-view 224-px batch copies 4x fewer bytes than float32 images: measured on the `meta` device."
    write_cifar10(tmp_path, monkeypatch)
    dls = get_dls('cifar10', path=tmp_path, bs=4, views=2, size=224, num_workers=0, device='meta')
    with CopiedBytes() as moved: x, y = dls.train.one_batch()
    assert x.device.type == 'meta' and x.dtype == torch.float32 and x.shape == (4, 2, 3, 224, 224)
    images = 4 * 2 * 3 * 224 * 224
    assert moved.n == images + 4 * 8                          # uint8 images, int64 labels
    assert 2 * 128 * 3 * 224 * 224 * 4 == 154_140_672         # the 154 MB per step of 128 (float32) ...
    assert 2 * 128 * 3 * 224 * 224 == 38_535_168              # ... and now


def test_pinned_memory_and_non_blocking_copies(monkeypatch):
    "CUDA loaders pin their batches; pinned batches are copied with non_blocking=True (CPU batches as before)."
    assert get_dls('digits', device='cuda').train.pin_memory and get_dls('digits', device='cuda').valid.pin_memory
    assert not get_dls('digits', device='cpu').train.pin_memory
    calls = []
    real = D.to_device
    monkeypatch.setattr(D, 'to_device', lambda b, device=None, non_blocking=False: calls.append(non_blocking) or real(b, device))
    ds = TensorClassDataset(torch.randn(8, 2), torch.arange(8) % 2, 'ab')
    with pytest.warns(UserWarning, match='pin_memory'):           # no accelerator here: torch says it will not pin
        list(D.DeviceDL(ds, bs=4, num_workers=0, pin_memory=True, device='cpu'))
    list(D.DeviceDL(ds, bs=4, num_workers=0, device='cpu'))
    assert calls == [True, True, False, False]


def global_and_shards(dl_fn, world):
    "The batches of a global loader and of its `world` shards (fresh loaders with the same seeds)."
    glob = [b[0][:, 0].long().tolist() for b in dl_fn()]
    shards = [[b[0][:, 0].long().tolist() for b in D.shard_dl(dl_fn(), rank=r, world=world)] for r in range(world)]
    return glob, shards


@pytest.mark.parametrize('world', [1, 2, 4])
@pytest.mark.parametrize('kind', ['balanced', 'shuffled', 'tail'])
def test_shards_partition_each_global_batch(kind, world):
    y = torch.arange(200) % 10
    ds = TensorClassDataset(torch.arange(200.)[:, None], y, vocab=range(10))
    def dl_fn():
        if kind == 'balanced': return BalancedDL(ds, bs=40, m=4, n_batches=6, seed=3, num_workers=0)
        random.seed(1)                       # fastai's loader seeds its shuffle from Python's generator when made
        return D.DeviceDL(ds, bs=48, shuffle=True, drop_last=kind == 'shuffled', num_workers=0)
    glob, shards = global_and_shards(dl_fn, world)
    expect = glob if kind != 'tail' else glob[:-1] + [glob[-1][:len(glob[-1]) - len(glob[-1]) % world]]
    assert len(shards[0]) == len(expect) == len(D.shard_dl(dl_fn(), rank=0, world=world))
    for step, g in enumerate(expect):
        parts = [s[step] for s in shards]
        assert len({len(p) for p in parts}) == 1                             # equal shards
        assert sorted(sum(parts, [])) == sorted(g)                           # together: the global batch
    if kind == 'balanced' and world == 2:                                    # a contiguous half holds 5 of 10 classes
        assert min(len(y[torch.tensor(s[i])].unique()) for s in shards for i in range(6)) >= 7


def test_shard_loads_only_its_rows():
    class Counted(TensorClassDataset):
        def __getitem__(self, i): self.reads.append(int(i)); return super().__getitem__(i)
    ds = Counted(torch.arange(96.)[:, None], torch.arange(96) % 6, vocab=range(6)); ds.reads = []
    g = BalancedDL(ds, bs=24, m=4, n_batches=4, seed=0, num_workers=0)
    reads = []
    for r in range(3):
        dl = D.shard_dl(g.new(), rank=r, world=3)
        ds.reads = []; list(dl); reads.append(sorted(ds.reads))
    assert [len(r) for r in reads] == [4 * 8] * 3                             # a third of each global batch each
    ds.reads = []; list(g.new())
    assert sorted(sum(reads, [])) == sorted(ds.reads)                         # together: what one process reads
    with pytest.raises(ValueError, match='split evenly over 5 processes'): D.shard_dl(g, rank=0, world=5)


def test_exported_tensor_dataset_holds_no_data():
    "`Learner.export` keeps `new_empty()` of the datasets: it must not pickle the data's storage through a view."
    import io
    ds = TensorClassDataset(torch.zeros(5000, 1, 28, 28), torch.zeros(5000, dtype=torch.long), list('abcdefghij'))
    buf = io.BytesIO(); torch.save(ds.new_empty(), buf)
    assert buf.tell() < 20_000, buf.tell()   # the data would be 15.7 MB
    buf = io.BytesIO(); torch.save(MultiView(ds, None, 2).new_empty(), buf)
    assert buf.tell() < 20_000, buf.tell()
