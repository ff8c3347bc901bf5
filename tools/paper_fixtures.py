"""Offline stand-ins for the `paper-smoke` suite's data: CIFAR-10 and Caltech-101 in their on-disk formats.

    python tools/paper_fixtures.py DIR          # the sizes paper-smoke reads (a few seconds)
    python tools/paper_fixtures.py DIR --tiny   # a few images of each, for a rehearsal on the CPU

The GPU machine has no network and no data. These fixtures let `silhouette-nb suite paper-smoke --data-path DIR` run
the real data path there (torchvision's readers, JPEG decoding, AutoAugment, uint8 batches moved to the device,
channels-last, mixed precision) so that it measures images per second and host syncs per step. The images are random
(smooth colour fields with noise, not one class's look): **the accuracies of runs on them mean nothing**.

- CIFAR-10 as torchvision reads it: `cifar-10-batches-py/` with five pickled training batches, `test_batch` and
  `batches.meta` (uint8 rows of 3 x 32 x 32, ten classes). torchvision checks each file's MD5 against the real files';
  `point_torchvision_at(DIR)` points those checks at the fixture files (they still run).
- Caltech-101 as torchvision reads it: `caltech101/101_ObjectCategories/<category>/image_NNNN.jpg` for 101 categories
  (and the `BACKGROUND_Google` folder torchvision leaves out), JPEGs of 300 x 200 like the real set's typical image.

The sizes: paper-smoke takes 1 024 training and 512 validation images of each (stratified subsets); CIFAR-10's
validation set is its test set, Caltech-101's is a seeded 20 % of all images, so 2 727 images (27 per category) leave
545 to choose 512 from. `SIZES` holds them.
"""
import argparse, hashlib, pickle, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
import numpy as np

NOTE = "fixture data (random images): the accuracies of these runs mean nothing; their speed and host syncs do"
SIZES = {'full': {'cifar_train': 1280, 'cifar_test': 640, 'caltech_classes': 101, 'caltech_per_class': 27, 'caltech_size': (300, 200)},
         'tiny': {'cifar_train': 40, 'cifar_test': 20, 'caltech_classes': 3, 'caltech_per_class': 10, 'caltech_size': (48, 40)}}
CIFAR = 'cifar-10-batches-py'


def _md5(path): return hashlib.md5(Path(path).read_bytes()).hexdigest()

def _smooth(rng, h, w, n=1):
    "`n` uint8 images (n, h, w, 3): a random 4 x 4 colour field, bilinearly enlarged (PIL), plus a little noise."
    from PIL import Image
    base = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    img = np.stack([np.asarray(Image.fromarray(b).resize((w, h), Image.BILINEAR)) for b in base]).astype(np.int16)
    return np.clip(img + rng.integers(-12, 13, img.shape, dtype=np.int16), 0, 255).astype(np.uint8)

def write_cifar10(root, # the torchvision root: `root/cifar-10-batches-py` is written
                  n_train:int=1280, n_test:int=640, seed:int=0)->Path:
    "CIFAR-10's pickled batches: `n_train` images over five training batches, `n_test` in `test_batch`, labels i % 10."
    base = Path(root)/CIFAR; base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ytr, yte = [i % 10 for i in range(n_train)], [i % 10 for i in range(n_test)]
    for nm, ys in [(f'data_batch_{i}', ytr[i - 1::5]) for i in range(1, 6)] + [('test_batch', yte)]:
        data = _smooth(rng, 32, 32, len(ys)).transpose(0, 3, 1, 2).reshape(len(ys), 3072)   # rows of R, G, B planes
        d = {'batch_label': nm, 'labels': ys, 'data': data, 'filenames': [f'{nm}_{i}.png' for i in range(len(ys))]}
        (base/nm).write_bytes(pickle.dumps(d, protocol=2))
    names = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
    (base/'batches.meta').write_bytes(pickle.dumps({'label_names': names, 'num_cases_per_batch': n_train // 5,
                                                    'num_vis': 3072}, protocol=2))
    return base

def _jpgs(args):
    "Write the JPEGs of one category (a worker's share)."
    from PIL import Image
    folder, n, size, seed = args
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(_smooth(rng, size[1], size[0], n)):
        Image.fromarray(img).save(folder/f'image_{i + 1:04d}.jpg', quality=90)

def write_caltech101(root, # the torchvision root: `root/caltech101/101_ObjectCategories` is written
                     n_classes:int=101, per_class:int=27, size:tuple=(300, 200), seed:int=0,
                     workers:int|None=None, # processes writing JPEGs; all cores when None
                    )->Path:
    "Caltech-101's folders of JPEGs: `per_class` images of `size` (width, height) in each of `n_classes` categories."
    base = Path(root)/'caltech101'/'101_ObjectCategories'
    jobs = [(base/f'category_{c:03d}', per_class, size, seed * 1000 + c) for c in range(n_classes)]
    jobs.append((base/'BACKGROUND_Google', 1, size, seed * 1000 + 999))   # torchvision skips this folder, as in the real set
    if workers == 1 or len(jobs) < 8: list(map(_jpgs, jobs))
    else:
        with ProcessPoolExecutor(workers) as ex: list(ex.map(_jpgs, jobs))
    (Path(root)/'caltech101'/'Annotations').mkdir(parents=True, exist_ok=True)
    return base

def write_paper_fixtures(root, # the data folder to pass as --data-path
                         tiny:bool=False, # a few images of each (SIZES['tiny']), for the CPU
                         workers:int|None=None,
                        )->dict: # what was written: sizes, seconds, the note
    "CIFAR-10 and Caltech-101 fixtures under `root` at paper-smoke's sizes (or tiny ones)."
    s, t0 = SIZES['tiny' if tiny else 'full'], time.perf_counter()
    write_cifar10(root, s['cifar_train'], s['cifar_test'])
    write_caltech101(root, s['caltech_classes'], s['caltech_per_class'], s['caltech_size'], workers=workers)
    return {**s, 'seconds': time.perf_counter() - t0, 'note': NOTE}

def point_torchvision_at(root):
    "Make torchvision's CIFAR-10 integrity checks expect the fixture files' MD5s (in this process; they still run)."
    import torchvision.datasets as tvd
    base = Path(root)/CIFAR
    tvd.CIFAR10.train_list = [[f'data_batch_{i}', _md5(base/f'data_batch_{i}')] for i in range(1, 6)]
    tvd.CIFAR10.test_list = [['test_batch', _md5(base/'test_batch')]]
    tvd.CIFAR10.meta = {**tvd.CIFAR10.meta, 'md5': _md5(base/'batches.meta')}

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('root', help='the data folder (pass it to --data-path)')
    ap.add_argument('--tiny', action='store_true', help='a few images of each, for a rehearsal on the CPU')
    a = ap.parse_args(argv)
    info = write_paper_fixtures(a.root, a.tiny)
    print(f"paper fixtures in {a.root} in {info['seconds']:.1f} s: CIFAR-10 {info['cifar_train']} + {info['cifar_test']}, "
          f"Caltech-101 {info['caltech_classes']} x {info['caltech_per_class']}; {NOTE}")

if __name__ == '__main__':
    sys.exit(main())
