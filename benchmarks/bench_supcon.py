"""SupCon: forward + backward time and peak memory of `silhouette_nb.supcon.SupConLoss` vs pytorch-metric-learning.

    python benchmarks/bench_supcon.py            # B in {256, 1024, 4096}, d = 128, K in {10, 100}
    python benchmarks/bench_supcon.py --quick    # B in {256, 1024} only

For each batch size B and number of classes K: float32 embeddings `randn(B, 128)` and labels `randint(K)`, the same
for both losses (temperature 0.1). Both losses are first evaluated on that batch and their values checked equal
(relative difference < 1e-5, printed). Time is the median of `--repeats` interleaved forward + backward runs after a
warm-up run (`_measure.compare_fwd_bwd`), with torch's default threads unless `--threads`. Peak memory is the RSS high-water mark of one forward + backward in a fresh
process minus the RSS just before it, after resetting the high-water mark (`_measure.peak_memory_fwd_bwd`; the method is explained and calibrated there:
the first printed line allocates a known 4096 x 4096 float32 tensor). Ratios are ours / PML: below 1 is better.
Then, unless `--no-compile`: `SupConLoss(validate_args=False)` (no host synchronisation, one graph) eager and under
`torch.compile` (`_measure.compare_compiled`; compilation timed apart). Nothing is asserted about speed.
"""
import argparse, os, platform, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from pytorch_metric_learning.losses import SupConLoss as PMLSupConLoss
from silhouette_nb.supcon import SupConLoss
from _measure import compare_fwd_bwd, print_compiled_table, peak_memory_fwd_bwd, calibrate_memory

D, TAU = 128, 0.1


def make_batch(B, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g).requires_grad_()
    y = torch.randint(0, K, (B,), generator=g)
    return x, y


def make_loss(name):
    return SupConLoss(TAU) if name == 'ours' else PMLSupConLoss(temperature=TAU)


def factory(name, B, K):
    "(fn, args) for `peak_memory_fwd_bwd`: runs in the fresh process."
    return make_loss(name), make_batch(B, K)


def mib(b): return float('nan') if b is None else b / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='skip B = 4096')
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--threads', type=int, default=None, help='torch threads (default: torch\'s choice)')
    ap.add_argument('--no-compile', action='store_true', help='skip the compiled vs eager table')
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads); os.environ['OMP_NUM_THREADS'] = str(a.threads)
    sizes = [256, 1024] if a.quick else [256, 1024, 4096]
    print(f"# SupCon forward+backward, d={D}, tau={TAU}, float32, CPU: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.1f}")
    measured, expected = calibrate_memory(4096)
    print(f"# memory calibration: torch.ones(4096, 4096) measured {mib(measured):.1f} MiB, expected {mib(expected):.1f} MiB")
    head = f"{'B':>5} {'K':>4} | {'ours ms':>9} {'PML ms':>9} {'time ratio':>10} | {'ours MiB':>9} {'PML MiB':>9} {'mem ratio':>9} | {'rel diff':>8}"
    print(head); print('-' * len(head))
    for B in sizes:
        for K in (10, 100):
            x, y = make_batch(B, K)
            ours, pml = make_loss('ours'), make_loss('pml')
            with torch.no_grad(): lo, lp = ours(x, y).item(), pml(x, y).item()
            rel = abs(lo - lp) / abs(lp)
            assert rel < 1e-5, f"values differ at B={B}, K={K}: ours {lo} vs PML {lp}"
            t = compare_fwd_bwd({'ours': ours, 'pml': pml}, x, y, repeats=a.repeats, warmup=1)
            m_ours, m_pml = peak_memory_fwd_bwd(factory, 'ours', B, K), peak_memory_fwd_bwd(factory, 'pml', B, K)
            print(f"{B:>5} {K:>4} | {t['ours']*1e3:>9.1f} {t['pml']*1e3:>9.1f} {t['ours']/t['pml']:>10.3f} | "
                  f"{mib(m_ours):>9.1f} {mib(m_pml):>9.1f} {mib(m_ours)/mib(m_pml):>9.3f} | {rel:>8.1e}", flush=True)
    if not a.no_compile:
        print_compiled_table('SupConLoss(validate_args=False)', lambda K: SupConLoss(TAU, validate_args=False), make_batch, sizes, a.repeats)


if __name__ == '__main__':
    main()
