"""Copy a finished study into the files `nbs/20_results.ipynb` reads: what `make study` and `make evidence` end with.

    python tools/study_results.py                    # results/standard -> nbs/results/standard.jsonl + nbs/results/standard/runs/
    python tools/study_results.py --src OUT --dst nbs/results
    python tools/study_results.py --name evidence --src results/evidence --no-models            # the evidence suites
    python tools/study_results.py --name evidence --src results/evidence --no-models --partial  # what has finished so far

With `--name evidence` the suites are `silhouette_nb.config.EVIDENCE`, the rows go to nbs/results/evidence.jsonl, and
only the runs whose histories `20_results` pictures (the `ablation` suites: the collapse numbers epoch by epoch) keep
their run folder. `--partial` copies an unfinished set (saying how many rows are missing), so that it can be committed
and resumed elsewhere: `make evidence` starts from the committed rows when its results file is missing.

Copies the results file, every run's `config.json` and `history.jsonl`, and the trained model of the runs the results
notebook pictures (Fashion-MNIST `convnet`, seed 0: ce, ce+sil, ce+sil+supcon), re-exported so that it holds the
model and not its data. Refuses an incomplete study (a configuration of `silhouette_nb.config.STUDY` without its row).
"""
import argparse, shutil, sys, warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PICTURED = dict(dataset='fashion_mnist', encoder='convnet', seed=0, objectives=('ce', 'ce+sil', 'ce+sil+supcon'))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--src', default=str(ROOT/'results/standard'), help='the study folder (results.jsonl, runs/)')
    p.add_argument('--dst', default=str(ROOT/'nbs/results'), help='where NAME.jsonl and NAME/runs/ go')
    p.add_argument('--name', default='standard', choices=('standard', 'evidence'), help="which study: 'standard' (STUDY) or 'evidence' (EVIDENCE)")
    p.add_argument('--no-models', action='store_true', help='copy no trained model')
    p.add_argument('--partial', action='store_true', help='copy an unfinished study, saying what is missing')
    args = p.parse_args()
    from silhouette_nb.config import STUDY, EVIDENCE
    from silhouette_nb.runner import read_rows
    suites = STUDY if args.name == 'standard' else EVIDENCE
    keep_runs = None if args.name == 'standard' else {c.key for s in suites if s.name.startswith('ablation') for c in s.configs()}
    src, dst = Path(args.src), Path(args.dst)
    rows = read_rows(src/'results.jsonl')
    missing = {c.key for s in suites for c in s.configs()} - {r['key'] for r in rows}
    if missing and not args.partial:
        sys.exit(f"study_results: {len(missing)} configurations of the study have no row yet in {src/'results.jsonl'}: run `make {'study' if args.name == 'standard' else 'evidence'}` again")
    runs = dst/args.name/'runs'
    runs.mkdir(parents=True, exist_ok=True)
    shutil.copy(src/'results.jsonl', dst/f'{args.name}.jsonl')
    for r in rows:
        if keep_runs is not None and r['key'] not in keep_runs: continue
        (runs/r['key']).mkdir(exist_ok=True)
        for f in ('config.json', 'history.jsonl'): shutil.copy(src/'runs'/r['key']/f, runs/r['key']/f)
    if missing: print(f"study_results: {len(missing)} configurations have no row yet (partial copy)")
    if args.no_models:
        print(f"study_results: {len(rows)} rows -> {dst/f'{args.name}.jsonl'}; run folders -> {runs}"); return
    from fastai.learner import load_learner
    for r in rows:
        if (r['dataset'], r['encoder'], r['seed']) == (PICTURED['dataset'], PICTURED['encoder'], PICTURED['seed']) and r['objective'] in PICTURED['objectives']:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                learn = load_learner(src/'runs'/r['key']/'model_last.pkl')
                learn.export((runs/r['key']/'model_last.pkl').resolve())   # `export` keeps empty datasets: the model only
    print(f"study_results: {len(rows)} rows -> {dst/'standard.jsonl'}; run folders -> {runs}")


if __name__ == '__main__': main()
