"""Training throughput of the CPU path, in images per second, variants measured side by side in one run.

    python tools/cpu_bench.py                      # Fashion-MNIST, the `convnet` encoder, CE, batch 256, 2 threads
    python tools/cpu_bench.py --threads 1 --rounds 3
    python tools/cpu_bench.py --encoder cnn --base 361529c   # also the package at that commit (a temporary worktree;
                                                             # the encoder must exist there: `convnet` came later)

Each variant trains an encoder (by default the `standard` suite's Fashion-MNIST `convnet`) + linear head with cross-entropy,
one-cycle Adam and fastai's loop, for `--batches` batches of augmented training data, after one warm-up batch, in a
fresh child process; the rounds alternate the variants so that a noisy machine slows them alike. It prints images/s
per variant (median over rounds) and each variant's ratio to the first. Variants:

- `base`           the package at `--base` (its own data path), NCHW            (only with --base)
- `items`          fastai's item-by-item loading, augmentation per item, NCHW (the path before batched loading)
- `batched`        one indexing per batch, augmentation of the whole batch on the device (`AugmentOnDevice`), NCHW
- `channels-last`  `batched` with the model and batches channels-last (`RunConfig.channels_last`)
- `compiled`       `channels-last` with the model under `torch.compile` (inductor, C++ on the CPU)
"""
import argparse, json, os, statistics, subprocess, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r'''
import json, sys, time, warnings
import torch
variant, threads, batches, bs, enc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(threads)
warnings.simplefilter('ignore')
from fastai.callback.core import Callback, CancelFitException
from silhouette_nb.data import get_dls
from silhouette_nb.learner import fit_objective
n = bs * (batches + 1)
dls = get_dls('fashion_mnist', bs=bs, n_train=n, n_valid=bs, device='cpu')
if variant == 'items':   # the training set read item by item and augmented per item, as fastai does by default
    from silhouette_nb.data import MultiView, DeviceDL, _TENSOR_DATA
    ds = dls.train.dataset
    dls.loaders[0] = DeviceDL(MultiView(ds.ds, _TENSOR_DATA['fashion_mnist'][1]), bs=bs, shuffle=True, drop_last=True, device='cpu')
class Clock(Callback):
    order = 99
    def before_batch(self):
        if self.iter == 1: self.t0 = time.perf_counter()   # after one warm-up batch
    def after_batch(self):
        if self.iter == batches: self.learn.seconds = time.perf_counter() - self.t0; raise CancelFitException
cbs = [Clock()]
if variant in ('channels-last', 'compiled'):
    from fastai.callback.channelslast import ChannelsLast
    cbs.append(ChannelsLast())
kw = {}
if variant == 'compiled':
    from silhouette_nb.learner import embedding_learner
    learn = embedding_learner(dls, enc, 'ce', cbs=cbs)
    learn.model = torch.compile(learn.model)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 3e-3)
else:
    learn = fit_objective(dls, enc, 'ce', epochs=1, lr=3e-3, quiet=True, cbs=cbs)
print(json.dumps({'variant': variant, 'img_s': bs * (batches - 1) / learn.seconds}))
'''


def run(variant, args, pythonpath):
    env = {**os.environ, 'PYTHONPATH': str(pythonpath), 'OMP_NUM_THREADS': str(args.threads)}
    out = subprocess.run([sys.executable, '-c', CHILD, 'batched' if variant == 'base' else variant, str(args.threads),
                          str(args.batches), str(args.bs), args.encoder], capture_output=True, text=True, env=env, cwd=pythonpath)
    if out.returncode: sys.exit(f"{variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])['img_s']


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--threads', type=int, default=2, help='torch threads of each child (default 2)')
    p.add_argument('--batches', type=int, default=40, help='timed batches per measurement (default 40)')
    p.add_argument('--bs', type=int, default=256, help='batch size (default 256)')
    p.add_argument('--encoder', default='convnet', help='a name in silhouette_nb.encoders.ENCODERS (default convnet)')
    p.add_argument('--rounds', type=int, default=2, help='rounds over the variants (default 2)')
    p.add_argument('--base', help='a git revision to measure too, as the `base` variant')
    p.add_argument('--only', nargs='+', help='some of: items batched channels-last compiled')
    args = p.parse_args()
    variants = args.only or ['items', 'batched', 'channels-last', 'compiled']
    trees = {v: ROOT for v in variants}
    tmp = None
    if args.base:
        tmp = tempfile.mkdtemp()
        subprocess.run(['git', '-C', str(ROOT), 'worktree', 'add', '--detach', '-q', f'{tmp}/base', args.base], check=True)
        variants, trees['base'] = ['base'] + variants, Path(tmp)/'base'
    try:
        res = {v: [] for v in variants}
        for r in range(args.rounds):
            for v in variants:
                res[v].append(run(v, args, trees[v]))
                print(f"round {r + 1}: {v:14s} {res[v][-1]:7.0f} images/s", flush=True)
    finally:
        if tmp: subprocess.run(['git', '-C', str(ROOT), 'worktree', 'remove', '--force', f'{tmp}/base'])
    first = statistics.median(res[variants[0]])
    print(f"\nFashion-MNIST {args.encoder}, CE, batch {args.bs}, {args.threads} thread(s), median of {args.rounds} rounds:")
    for v in variants:
        m = statistics.median(res[v])
        print(f"  {v:14s} {m:7.0f} images/s  {m / first:5.2f}x {variants[0]}")


if __name__ == '__main__': main()
