"""Copy a finished study into the files `nbs/20_results.ipynb` reads: what `make study` ends with.

    python tools/study_results.py                    # results/standard -> nbs/results/standard.jsonl + nbs/results/standard/runs/
    python tools/study_results.py --src OUT --dst nbs/results

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
    p.add_argument('--dst', default=str(ROOT/'nbs/results'), help='where standard.jsonl and standard/runs/ go')
    args = p.parse_args()
    from silhouette_nb.config import STUDY
    from silhouette_nb.runner import read_rows
    src, dst = Path(args.src), Path(args.dst)
    rows = read_rows(src/'results.jsonl')
    missing = {c.key for s in STUDY for c in s.configs()} - {r['key'] for r in rows}
    if missing: sys.exit(f"study_results: {len(missing)} configurations of the study have no row yet in {src/'results.jsonl'}: run `make study` again")
    runs = dst/'standard'/'runs'
    runs.mkdir(parents=True, exist_ok=True)
    shutil.copy(src/'results.jsonl', dst/'standard.jsonl')
    for r in rows:
        (runs/r['key']).mkdir(exist_ok=True)
        for f in ('config.json', 'history.jsonl'): shutil.copy(src/'runs'/r['key']/f, runs/r['key']/f)
    from fastai.learner import load_learner
    for r in rows:
        if (r['dataset'], r['encoder'], r['seed']) == (PICTURED['dataset'], PICTURED['encoder'], PICTURED['seed']) and r['objective'] in PICTURED['objectives']:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                learn = load_learner(src/'runs'/r['key']/'model_last.pkl')
                learn.export((runs/r['key']/'model_last.pkl').resolve())   # `export` keeps empty datasets: the model only
    print(f"study_results: {len(rows)} rows -> {dst/'standard.jsonl'}; run folders -> {runs}")


if __name__ == '__main__': main()
