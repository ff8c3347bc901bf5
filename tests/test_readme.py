"README.md is generated from nbs/index.ipynb and must agree with it."
import importlib.util, json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('readme', ROOT/'tools'/'readme.py')
readme = importlib.util.module_from_spec(spec); spec.loader.exec_module(readme)

def test_readme_matches_index():
    assert (ROOT/'README.md').read_text(encoding='utf-8') == readme.render(), \
        "README.md and nbs/index.ipynb disagree: run `make readme` and commit"

def test_render_rules(tmp_path):
    nb = {'cells': [
        {'cell_type': 'markdown', 'metadata': {}, 'source': '# Title'},
        {'cell_type': 'code', 'metadata': {}, 'outputs': [], 'source': '#| hide\nsecret = 1'},
        {'cell_type': 'code', 'metadata': {}, 'source': '1+1',
         'outputs': [{'output_type': 'execute_result', 'data': {'text/plain': '2'}, 'metadata': {}}]},
    ], 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}
    p = tmp_path/'nb.ipynb'; p.write_text(json.dumps(nb))
    out = readme.render(p)
    assert 'secret' not in out
    assert out == '# Title\n\n```python\n1+1\n```\n\n```\n2\n```\n'


def test_readme_outputs_are_what_the_code_prints():
    "Each output README's `## Use` section shows is what its code shows when run now (numbers to `readme.ABS_TOL`)."
    blocks = readme.section_blocks((ROOT/'README.md').read_text(encoding='utf-8'))
    assert len(blocks) >= 4 and sum(out is not None for _, out in blocks) >= 3, blocks
    printed = readme.run_cells([src for src, _ in blocks])
    for (src, shown), out in zip(blocks, printed):
        if shown is None: assert out is None, f'README shows no output for\n{src}\nwhich shows\n{out}'; continue
        assert out is not None, f'README shows\n{shown}\nfor\n{src}\nwhich shows nothing'
        diff = readme.same_output(shown, out)
        assert diff is None, f'README is stale for\n{src}\n{diff}\n(run `python tools/readme.py --run`, then nbdev-clean, and commit)'

def test_same_output_compares_numbers_within_the_tolerance():
    shown = "{'loss': 0.473,\n 'top1': 0.992}"
    assert readme.same_output(shown, "{'loss': 0.479,\n 'top1': 0.981}") is None
    assert 'beyond' in readme.same_output(shown, "{'loss': 0.523,\n 'top1': 0.981}")
    assert 'text differs' in readme.same_output(shown, "{'loss': 0.473,\n 'top1': 0.992,\n 'knn': 0.9}")
    assert 'text differs' in readme.same_output('tensor(1.0313, grad_fn=<RsubBackward1>)', 'tensor(1.0313, grad_fn=<WhereBackward0>)')
    assert readme.same_output('tensor(-0.0511)', 'tensor(-0.0511)') is None
    assert readme.same_output("{'erank': 43.884}", "{'erank': 44.252}") is None            # within 3 % of itself
    assert 'beyond' in readme.same_output("{'erank': 43.884}", "{'erank': 46.1}")

def test_section_blocks_and_run_cells():
    md = "# T\n\n## Use\n\n```python\nx = 2\nx + 1\n```\n\n```\n3\n```\n\ntext\n\n```python\ny = x\n```\n\n## Next\n\n```python\nz\n```\n"
    blocks = readme.section_blocks(md)
    assert blocks == [('x = 2\nx + 1', '3'), ('y = x', None)]
    assert readme.run_cells([s for s, _ in blocks]) == ['3', None]
