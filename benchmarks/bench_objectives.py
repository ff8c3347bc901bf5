"""The cost of each objective's training step, measured side by side: what "lower overhead than SupCon" rests on.

    python benchmarks/bench_objectives.py                     # the standard study's three settings, 1 thread
    python benchmarks/bench_objectives.py --quick             # fewer repeats
    python benchmarks/bench_objectives.py --out FILE.json     # also write the figures as JSON

For each setting of the standard study (Fashion-MNIST / `convnet` / batch 256, MNIST-1D / `cnn` / 128, digits / `cnn` /
64): one network per objective (CE, CE+Sil, CE+SupCon, CE+Sil+SupCon), all starting from the same weights, and real
training batches drawn once from the study's data (augmented as in training). A step is what training does per batch:
forward, the objective, backward, an Adam step. The objectives' steps are *interleaved* (CE, CE+Sil, CE+SupCon, ...,
then again), so that load from other processes falls on all of them alike; each objective's time is the median of
`--repeats` steps after warm-up, and the table gives each median as a ratio to CE's.

Two protocols for the SupCon objectives:
- `views=2` — the study's: two augmented views of each image, so SupCon's step runs the network on 2 × bs images;
- `same batch` — SupCon on the one-view batch CE sees (positives are the other images of a class), which isolates the
  cost of the term itself.
Nothing is asserted: a benchmark prints what it measured.
"""
import argparse, json, os, platform, statistics, sys, time, warnings
import torch

SETTINGS = (('fashion_mnist', 'convnet', 256, True), ('mnist1d', 'cnn', 128, False), ('digits', 'cnn', 64, False))
OBJECTIVES = ('ce', 'ce+sil', 'ce+supcon', 'ce+sil+supcon')


def batches(dataset, bs, views, n, seed=0):
    "`n` real training batches of the study's data for `dataset` (augmented as in training), on the CPU."
    from silhouette_nb.data import get_dls
    dls = get_dls(dataset, bs=bs, views=views, seed=seed, device="cpu")
    out = []
    for b in dls.train:
        out.append((b[0].clone(), b[1].clone()))
        if len(out) == n: break
    return out


def learner_parts(dataset, encoder, objective, x, channels_last, seed=0):
    "(model, objective, optimiser) as `embedding_learner` builds them, with the study's options, from seed `seed`."
    from silhouette_nb.encoders import make_encoder
    from silhouette_nb.learner import EmbeddingNet, _embedding_size
    from silhouette_nb.objectives import make_objective
    torch.manual_seed(seed)
    sample = x[0, 0] if x.ndim == 5 or (x.ndim == 4 and dataset == 'mnist1d') else x[0]
    enc = make_encoder(encoder, tuple(sample.shape))
    d_h = _embedding_size(enc, sample)
    obj = make_objective(objective, 10, d_h, validate_args=False)
    model = EmbeddingNet(enc, 10, None, sample_ndim=sample.ndim, d_h=d_h)
    if channels_last: model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(list(model.parameters()) + list(obj.parameters()), lr=1e-3)
    return model, obj, opt


def step(model, obj, opt, xb, yb):
    "One training step: forward, objective, backward, Adam."
    out = model.embed(xb)
    loss = obj(out, yb)['loss']
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def measure(setting, repeats, warmup):
    dataset, encoder, bs, cl = setting
    one, two = batches(dataset, bs, 1, repeats + warmup), batches(dataset, bs, 2, repeats + warmup)
    arms = {}
    for o in OBJECTIVES:
        views = 2 if 'supcon' in o else 1
        arms[o if views == 1 else f'{o} (views=2)'] = (o, two if views == 2 else one)
        if views == 2: arms[f'{o} (same batch)'] = (o, one)
    parts = {k: learner_parts(dataset, encoder, o, data[0][0], cl) for k, (o, data) in arms.items()}
    times = {k: [] for k in arms}
    for i in range(warmup + repeats):
        for k, (o, data) in arms.items():
            xb, yb = data[i % len(data)]   # a small training set has fewer batches than steps: they repeat
            if cl and xb.ndim == 4: xb = xb.contiguous(memory_format=torch.channels_last)
            t = time.perf_counter()
            step(*parts[k], xb, yb)
            if i >= warmup: times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {'dataset': dataset, 'encoder': encoder, 'bs': bs, 'repeats': repeats,
            'median_s': med, 'ratio_to_ce': {k: v / med['ce'] for k, v in med.items()}}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--repeats', type=int, default=30)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--quick', action='store_true', help='10 repeats')
    p.add_argument('--out', default=None, help='write the figures as JSON here')
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    warnings.simplefilter('ignore')
    repeats = 10 if a.quick else a.repeats
    load = os.getloadavg()[0]
    print(f"# objectives' training steps, interleaved; {a.threads} thread(s), torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"load average {load:.2f} at the start")
    res = []
    for s in SETTINGS:
        r = measure(s, repeats, a.warmup)
        res.append(r)
        print(f"\n## {r['dataset']} / {r['encoder']} / batch {r['bs']}: median of {repeats} steps")
        print(f"{'objective':<30} {'ms / step':>10} {'/ CE':>7}")
        for k, v in r['median_s'].items(): print(f"{k:<30} {v * 1e3:>10.1f} {r['ratio_to_ce'][k]:>7.2f}")
    if a.out:
        meta = {'threads': a.threads, 'torch': torch.__version__, 'load_average_start': load, 'load_average_end': os.getloadavg()[0],
                'when': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, 'w') as f: json.dump({'meta': meta, 'settings': res}, f, indent=1)
        print(f"\nwritten to {a.out}")


if __name__ == '__main__': main()
