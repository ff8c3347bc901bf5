"""Very large batches on one device: forward + backward time and peak memory of each loss path against the batch size.

    python benchmarks/bench_large_batch.py                   # B in {1024, 4096, 16384}, d = 128, K = 10
    python benchmarks/bench_large_batch.py --sizes 1024 4096 # fewer sizes
    python benchmarks/bench_large_batch.py --chunk 2048      # another block size
    python benchmarks/bench_large_batch.py --threads 1       # one torch thread (steadier on a shared machine)

For each batch size B: float32 embeddings `randn(B, 128)` and labels `randint(10)`, the same for every path:
- `sil euclid`            `SoftSilhouetteLoss()` — the fused Euclidean path, holds the B x B distances;
- `sil euclid chunked`    `SoftSilhouetteLoss(chunk_size=C)` — row blocks, recomputed in backward;
- `sil cosine`            `SoftSilhouetteLoss(distance='cosine')` — the B x B cosine distances through autograd;
- `sil cosine chunked`    `SoftSilhouetteLoss(distance='cosine', chunk_size=C)`;
- `sil sqeuclid O(BKd)`   `SoftSilhouetteLoss(distance='sqeuclidean')` — the exact class-mean identity, no B x B matrix;
- `supcon`                `SupConLoss()` — one B x B softmax kept for backward;
- `supcon chunked`        `SupConLoss(chunk_size=C)`.
Time is the median of `--repeats` forward + backward runs after a warm-up (`_measure.time_fwd_bwd`), with torch's
default threads unless `--threads` (on a machine shared with other jobs, two threads waiting for each other at every
operation can make a millisecond operation take a third of a second: use `--threads 1` there). Peak memory is the RSS high-water mark of one forward + backward in a fresh process minus the RSS
just before it, after resetting the high-water mark (`_measure.peak_memory_fwd_bwd`; the method is explained and
calibrated there, and the first printed line allocates a known 4096 x 4096 float32 tensor). `vs unchunked` is the
relative difference of the loss and the largest gradient difference relative to the largest gradient entry, chunked
against unchunked on the same batch (blank for the unchunked and O(BKd) paths). Nothing is asserted.
"""
import argparse, os, platform, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from silhouette_nb.silhouette import SoftSilhouetteLoss
from silhouette_nb.supcon import SupConLoss
from _measure import time_fwd_bwd, peak_memory_fwd_bwd, calibrate_memory

D, K = 128, 10
PATHS = ('sil euclid', 'sil euclid chunked', 'sil cosine', 'sil cosine chunked', 'sil sqeuclid O(BKd)',
         'supcon', 'supcon chunked')
UNCHUNKED = {'sil euclid chunked': 'sil euclid', 'sil cosine chunked': 'sil cosine', 'supcon chunked': 'supcon'}


def make_batch(B, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g).requires_grad_(), torch.randint(0, K, (B,), generator=g)


def make_loss(path, chunk):
    return {'sil euclid': lambda: SoftSilhouetteLoss(),
            'sil euclid chunked': lambda: SoftSilhouetteLoss(chunk_size=chunk),
            'sil cosine': lambda: SoftSilhouetteLoss(distance='cosine'),
            'sil cosine chunked': lambda: SoftSilhouetteLoss(distance='cosine', chunk_size=chunk),
            'sil sqeuclid O(BKd)': lambda: SoftSilhouetteLoss(distance='sqeuclidean'),
            'supcon': lambda: SupConLoss(),
            'supcon chunked': lambda: SupConLoss(chunk_size=chunk)}[path]()


def factory(path, B, chunk):
    "(fn, args) for `peak_memory_fwd_bwd`: runs in the fresh process."
    return make_loss(path, chunk), make_batch(B)


def loss_and_grad(fn, x, y):
    x.grad = None
    loss = fn(x, y)
    loss.backward()
    g, x.grad = x.grad, None
    return loss.item(), g


def mib(b): return float('nan') if b is None else b / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sizes', type=int, nargs='+', default=[1024, 4096, 16384])
    ap.add_argument('--chunk', type=int, default=1024, help='chunk_size of the chunked paths')
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--threads', type=int, default=None, help="torch threads (default: torch's choice)")
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads); os.environ['OMP_NUM_THREADS'] = str(a.threads)  # fresh processes too
    print(f"# large-batch loss paths, forward+backward, d={D}, K={K}, float32, chunk_size={a.chunk}, "
          f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.1f}")
    measured, expected = calibrate_memory(4096)
    print(f"# memory calibration: torch.ones(4096, 4096) measured {mib(measured):.1f} MiB, expected {mib(expected):.1f} MiB")
    head = f"{'B':>6} | {'path':22s} | {'time s':>8} | {'peak MiB':>9} | {'vs unchunked: loss, grad':>24}"
    print(head); print('-' * len(head))
    for B in a.sizes:
        x, y = make_batch(B)
        reference = {}
        for path in PATHS:
            fn = make_loss(path, a.chunk)
            agree = ''
            if path in UNCHUNKED:
                l0, g0 = reference[UNCHUNKED[path]]
                l1, g1 = loss_and_grad(fn, x, y)
                agree = f"{abs(l1 - l0) / abs(l0):.1e}, {float((g1 - g0).abs().max() / g0.abs().max()):.1e}"
            elif path in UNCHUNKED.values(): reference[path] = loss_and_grad(fn, x, y)
            t = time_fwd_bwd(fn, x, y, repeats=a.repeats, warmup=1)
            m = peak_memory_fwd_bwd(factory, path, B, a.chunk)
            print(f"{B:>6} | {path:22s} | {t:>8.3f} | {mib(m):>9.1f} | {agree:>24}", flush=True)
        del reference


if __name__ == '__main__':
    main()
