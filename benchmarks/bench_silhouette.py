"""Soft Silhouette Loss: forward + backward time and peak memory against pytorch-metric-learning's SupConLoss and
against the floor of one Gram product.

    python benchmarks/bench_silhouette.py            # B in {256, 1024, 4096}, d = 128, K in {10, 100}
    python benchmarks/bench_silhouette.py --quick    # B in {256, 1024} only

For each batch size B and number of classes K: float32 embeddings `randn(B, 128)` and labels `randint(K)`, the same
for every contender:
- `sil`     `SoftSilhouetteLoss()` — the defaults: Euclidean distance, L2-normalised, tau = 0.01 (B x B path);
- `sil-sq`  `SoftSilhouetteLoss(distance='sqeuclidean')` — the exact O(B·K·d) path, no B x B matrix;
- `PML`     `pytorch_metric_learning.losses.SupConLoss(temperature=0.1)`, the baseline practitioners use;
- `Gram`    `(x @ x.T).sum()` — one Gram product forward + backward, the floor of any loss that looks at all pairs.
Time is the median of `--repeats` interleaved forward + backward runs after a warm-up (`_measure.compare_fwd_bwd`), so
that a busy machine slows every contender alike and the ratios stay meaningful. Peak memory is the RSS high-water
mark of one forward + backward in a fresh process (`_measure.peak_memory_fwd_bwd`; method and calibration there).
Ratios below 1 mean ours is faster / smaller. Then, unless `--no-compile`: `SoftSilhouetteLoss(n_classes=K,
validate_args=False)` (no host synchronisation, one graph) eager and under `torch.compile` (`_measure.compare_compiled`;
compilation timed apart). Nothing is asserted.
"""
import argparse, os, platform, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from pytorch_metric_learning.losses import SupConLoss as PMLSupConLoss
from silhouette_nb.silhouette import SoftSilhouetteLoss
from _measure import compare_fwd_bwd, print_compiled_table, peak_memory_fwd_bwd, calibrate_memory

D = 128
NAMES = ('sil', 'sil-sq', 'PML', 'Gram')


def make_batch(B, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g).requires_grad_(), torch.randint(0, K, (B,), generator=g)


def gram(x, y): return (x @ x.T).sum()


def make_fn(name):
    return {'sil': SoftSilhouetteLoss(), 'sil-sq': SoftSilhouetteLoss(distance='sqeuclidean'),
            'PML': PMLSupConLoss(temperature=0.1), 'Gram': gram}[name]


def factory(name, B, K):
    "(fn, args) for `peak_memory_fwd_bwd`: runs in the fresh process."
    return make_fn(name), make_batch(B, K)


def mib(b): return float('nan') if b is None else b / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='skip B = 4096')
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--no-memory', action='store_true', help='time only')
    ap.add_argument('--no-compile', action='store_true', help='skip the compiled vs eager table')
    ap.add_argument('--threads', type=int, default=None, help="torch threads (default: torch's choice)")
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads); os.environ['OMP_NUM_THREADS'] = str(a.threads)
    sizes = [256, 1024] if a.quick else [256, 1024, 4096]
    print(f"# Soft Silhouette forward+backward, d={D}, float32, CPU: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.1f}")
    if not a.no_memory:
        measured, expected = calibrate_memory(4096)
        print(f"# memory calibration: torch.ones(4096, 4096) measured {mib(measured):.1f} MiB, expected {mib(expected):.1f} MiB")
    head = (f"{'B':>5} {'K':>4} | " + " ".join(f"{n + ' ms':>10}" for n in NAMES) +
            f" | {'sil/PML':>7} {'sil/Gram':>8} {'sq/PML':>7} | " + " ".join(f"{n + ' MiB':>10}" for n in NAMES))
    print(head); print('-' * len(head))
    for B in sizes:
        for K in (10, 100):
            x, y = make_batch(B, K)
            t = compare_fwd_bwd({n: make_fn(n) for n in NAMES}, x, y, repeats=a.repeats)
            mem = {n: (None if a.no_memory else peak_memory_fwd_bwd(factory, n, B, K)) for n in NAMES}
            print(f"{B:>5} {K:>4} | " + " ".join(f"{t[n] * 1e3:>10.1f}" for n in NAMES) +
                  f" | {t['sil'] / t['PML']:>7.3f} {t['sil'] / t['Gram']:>8.2f} {t['sil-sq'] / t['PML']:>7.3f} | " +
                  " ".join(f"{mib(mem[n]):>10.1f}" for n in NAMES), flush=True)
    if not a.no_compile:
        print_compiled_table('SoftSilhouetteLoss(n_classes=K, validate_args=False)',
                             lambda K: SoftSilhouetteLoss(n_classes=K, validate_args=False), make_batch, sizes, a.repeats)


if __name__ == '__main__':
    main()
