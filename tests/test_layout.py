"The house's layout: notebooks numbered in dependency order, one module per notebook, named for its concern."
import json, re
from pathlib import Path

NBS = Path(__file__).resolve().parent.parent/'nbs'
IMPORT = re.compile(r'(?:from|import)\s+silhouette_nb\.(\w+)')


def notebooks():
    "Numbered notebooks, each with the module it exports (None for a result notebook)."
    out = {}
    for p in sorted(NBS.glob('[0-9]*.ipynb')):
        cells = [''.join(c['source']) for c in json.loads(p.read_text())['cells']]
        exp = [m.group(1) for s in cells for m in [re.match(r'#\|\s*default_exp\s+(\S+)', s)] if m]
        out[p.stem] = (exp[0] if exp else None, cells)
    return out


def test_each_module_has_one_notebook():
    mods = [m for m, _ in notebooks().values() if m]
    assert len(mods) == len(set(mods)), mods
    assert not {'utils', 'helpers', 'misc', 'core'} & set(mods)


def test_no_notebook_imports_a_later_one():
    nbs = notebooks()
    home = {m: nb for nb, (m, _) in nbs.items() if m}
    late = [(nb, m.group(1), home[m.group(1)]) for nb, (_, cells) in nbs.items() for s in cells
            for m in IMPORT.finditer(s) if m.group(1) in home and home[m.group(1)] > nb]
    assert not late, '\n'.join(f"{nb} imports silhouette_nb.{mod}, which {later} defines" for nb, mod, later in late)


def test_the_check_sees_a_forward_import(tmp_path, monkeypatch):
    "The check above can fail: a notebook importing a later one is reported."
    for name, src in (('00_a', '#| default_exp a\n'), ('01_b', '#| default_exp b\n')):
        cells = [{'cell_type': 'code', 'source': [src]}] + ([{'cell_type': 'code', 'source': ['from silhouette_nb.b import f']}]
                                                            if name == '00_a' else [])
        (tmp_path/f'{name}.ipynb').write_text(json.dumps({'cells': cells}))
    monkeypatch.setattr(__import__(__name__), 'NBS', tmp_path)
    try: test_no_notebook_imports_a_later_one()
    except AssertionError as e: assert '00_a imports silhouette_nb.b, which 01_b defines' in str(e)
    else: raise AssertionError('the forward import was not reported')
