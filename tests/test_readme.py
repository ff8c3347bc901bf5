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
