"""Timing and peak-memory helpers shared by the loss benchmarks.

Time: `time_fwd_bwd` runs `fn(*args)` (a scalar loss) and `.backward()` after warm-up calls and returns the median
wall-clock time of several repeats; `compare_fwd_bwd` does the same for several functions *interleaved* (A, B, A,
B, ...), so that a busy machine slows them alike and their ratio stays meaningful.

Memory: torch has no peak-allocation counter for CPU tensors (`torch.cuda.max_memory_allocated` is CUDA only), and
`tracemalloc` does not see torch's allocations. `peak_memory_fwd_bwd` therefore measures the process itself: it
starts a *fresh* Python process (multiprocessing "spawn"), builds the inputs there, resets the kernel's high-water
mark of the resident set size (writing "5" to `/proc/self/clear_refs`, Linux >= 4.0), reads the RSS (`VmRSS` in
`/proc/self/status`), runs one forward + backward, and reads the high-water mark (`VmHWM`). The difference is the
extra memory the call needed at its peak: every tensor the forward pass keeps for backward, the temporaries, and the
gradients. A fresh process per measurement means nothing freed earlier (warm-up, the other loss) is still resident
and silently reused; torch's CPU allocator returns large blocks to the OS on free, so the RSS follows the live
tensors; to make that exact, the child runs with glibc's `MALLOC_MMAP_THRESHOLD_` fixed at 64 KiB (otherwise
glibc raises the threshold after the first large free and keeps later blocks of up to 32 MiB in its heap). The child
runs one warm-up forward + backward first, so one-time costs (thread pools, autograd engine, BLAS buffers) are not
counted. (Without the reset, the high-water mark left by `import torch` hides allocations of tens of MiB.) Where
`clear_refs` cannot be written, `resource.getrusage(...).ru_maxrss` is used instead and a call whose peak stays under
the setup's high-water mark is reported as `None`. `calibrate_memory` checks the method on a known allocation.

Compiled: `compare_compiled` times a loss eager and under `torch.compile` (inductor, one graph, static shapes), the
runs interleaved as above; the compilation (the first call) is timed apart and left out of the medians.
"""
import gc, multiprocessing as mp, os, resource, statistics, time
import torch

__all__ = ['time_fwd_bwd', 'compare_fwd_bwd', 'compare_compiled', 'print_compiled_table', 'peak_memory_fwd_bwd', 'calibrate_memory']


def _clear_grads(args):
    for a in args:
        if getattr(a, 'grad', None) is not None: a.grad = None


def _fwd_bwd(fn, args):
    loss = fn(*args)
    loss.backward()
    _clear_grads(args)
    return loss


def time_fwd_bwd(fn, *args, repeats:int=5, warmup:int=1) -> float:
    "Median seconds of `fn(*args).backward()` over `repeats` runs, after `warmup` runs."
    return compare_fwd_bwd({'fn': fn}, *args, repeats=repeats, warmup=warmup)['fn']


def compare_fwd_bwd(fns:dict, *args, repeats:int=5, warmup:int=1) -> dict:
    "Median seconds of forward + backward of each function in `fns` (name -> fn), the runs interleaved."
    for _ in range(warmup):
        for fn in fns.values(): _fwd_bwd(fn, args)
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            gc.collect()
            t = time.perf_counter()
            _fwd_bwd(fn, args)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def compare_compiled(fn, *args, repeats:int=5) -> tuple:
    "(eager s, compiled s, compile s): median forward + backward of `fn(*args)` eager and compiled, and the first compiled call."
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, dynamic=False)
    t = time.perf_counter()
    _fwd_bwd(compiled, args)
    first = time.perf_counter() - t
    times = compare_fwd_bwd({'eager': fn, 'compiled': compiled}, *args, repeats=repeats)
    return times['eager'], times['compiled'], first


def print_compiled_table(title, make_loss, make_batch, sizes, repeats:int=5):
    "Print eager vs compiled times of `make_loss(K)` on `make_batch(B, K)` for every B in `sizes` and K in (10, 100)."
    head = f"{'B':>5} {'K':>4} | {'eager ms':>9} {'compiled ms':>11} {'compiled/eager':>14} | {'compile s':>9}"
    print(f"# {title}, eager vs torch.compile (inductor, fullgraph)"); print(head); print('-' * len(head))
    for B in sizes:
        for K in (10, 100):
            eager, compiled, first = compare_compiled(make_loss(K), *make_batch(B, K), repeats=repeats)
            print(f"{B:>5} {K:>4} | {eager * 1e3:>9.1f} {compiled * 1e3:>11.1f} {compiled / eager:>14.3f} | {first:>9.1f}", flush=True)


def _status(key) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'): return int(line.split()[1]) * 1024  # kB
    raise KeyError(key)


def _start_peak():
    "Reset the RSS high-water mark if the kernel allows; return (rss now, whether it was reset, ru_maxrss now)."
    gc.collect()
    try:
        with open('/proc/self/clear_refs', 'w') as f: f.write('5')
        reset = True
    except OSError:
        reset = False
    return _status('VmRSS'), reset, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _end_peak(start):
    before, reset, maxrss_before = start
    if reset: return _status('VmHWM') - before
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return maxrss - before if maxrss > maxrss_before else None


def _child(factory, fargs, fkwargs, conn):
    try:
        fn, args = factory(*fargs, **fkwargs)
        _fwd_bwd(fn, args)  # warm-up: one-time allocations are not the loss's
        start = _start_peak()
        _fwd_bwd(fn, args)
        conn.send(_end_peak(start))
    except BaseException as e:  # report, do not hang the parent
        conn.send(e)
    finally:
        conn.close()


def _in_fresh_process(target, *a):
    ctx = mp.get_context('spawn')
    os.environ.setdefault('MALLOC_MMAP_THRESHOLD_', str(64 * 1024))  # inherited by the child only: see the docstring
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=target, args=(*a, child))
    p.start(); child.close()
    res = parent.recv()
    p.join()
    if isinstance(res, BaseException): raise res
    return res


def peak_memory_fwd_bwd(factory, *fargs, **fkwargs):
    """Peak extra bytes of one forward + backward, measured in a fresh process.

    `factory(*fargs, **fkwargs)` runs in that process and returns `(fn, args)`; it must be importable (a module-level
    function). Returns `None` if the RSS high-water mark did not move (see the module docstring)."""
    return _in_fresh_process(_child, factory, fargs, fkwargs)


def _calib_child(n, conn):
    import torch
    start = _start_peak()
    t = torch.ones(n, n)  # n*n float32, every page written
    del t
    conn.send(_end_peak(start))
    conn.close()


def calibrate_memory(n:int=4096):
    "(measured, expected) bytes for allocating an `n x n` float32 tensor of ones: a check of the method."
    return _in_fresh_process(_calib_child, n), n * n * 4
