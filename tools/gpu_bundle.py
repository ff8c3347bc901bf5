"""The wheels the project's GPU machine lacks, for an offline install there: `make gpu-bundle`.

    python tools/gpu_bundle.py                       # Python 3.12 (the GPU machine's): .gpu-bundle/cp312/
    python tools/gpu_bundle.py --python-version 3.11 # the same versions for a Python 3.11 (the offline rehearsal here)

The GPU machine (one H100 or H200, /work/.library/device/KINDS.md) has no network and its own `python3` (3.12, torch
2.11, torchvision 0.26 and the science stack, `GPU_HAS`) but no fastai, fastcore, pytorch-metric-learning, nbdev... nor
this package. The list of what to bring is derived, not written: the requirement closure of the package's `fastai`,
`pml`, `experiments` extras and of what the checks run (nbdev, pytest...; `ROOTS`), walked through the metadata of the
distributions installed here (so at the versions tested here), with the markers evaluated for the target Python, and cut
at every package the GPU machine has. `EXCLUDE` names what is left out on purpose (spacy: fastai's text models only).
Each wheel is fetched with `pip download --no-deps --only-binary=:all:` for that Python on manylinux x86-64, the pure
wheel (`py3-none-any`) where the release has one; `manifest.json` beside them records each wheel (version, bytes,
sha256, pure or not, which package needs it), the requirements that the bundle puts on the GPU machine's own packages
(`gpu_requirements`: `tools/gpu_check.py` checks them there) and the total, which must stay under `--max-mib`.
"""
import argparse, hashlib, importlib.metadata as md, json, os, re, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT/'.gpu-bundle'   # ignored by git; one folder per Python: cp312/, cp311/...
GPU_PYTHON = '3.12.3'         # the GPU machine's python3 (KINDS.md)
MAX_MIB = 40                  # the goal: the checkout and the bundle travel in at most 64 MiB
# What the device machine's python3 holds (KINDS.md, "Python packages already there", read 2026-11-17): never bundled.
GPU_HAS = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp""".split()
# What the checks need: the package's extras for the library, the suites and `pytorch-metric-learning`, and the tools
# the checks run (nbdev-test and its kernel-less executor, pytest for `pytest -m gpu`, hypothesis for the test files).
EXTRAS = ('fastai', 'pml', 'experiments')
TOOLS = ('nbdev', 'execnb', 'pytest', 'hypothesis', 'psutil', 'scipy')
EXCLUDE = {'spacy': "fastai's text models only (fastai.text); silhouette_nb never imports it: 60+ MiB with its needs"}
PLATFORMS = ('manylinux_2_28_x86_64', 'manylinux_2_27_x86_64', 'manylinux_2_24_x86_64', 'manylinux_2_17_x86_64',
             'manylinux2014_x86_64', 'manylinux1_x86_64')


def norm(name:str)->str:
    "A project name as PEP 503 normalises it: `Typing_Extensions` -> `typing-extensions`."
    return re.sub(r'[-_.]+', '-', name).lower()

def full_version(python_version:str)->str:
    """X.Y.Z for `python_version` X.Y: this Python's own where it is X.Y, `GPU_PYTHON` for its X.Y, else X.Y.0
    (Requires-Python such as >=3.11.5 reads the micro version)."""
    if python_version.count('.') == 2: return python_version
    if python_version == '.'.join(map(str, sys.version_info[:2])): return '.'.join(map(str, sys.version_info[:3]))
    return GPU_PYTHON if GPU_PYTHON.startswith(python_version + '.') else python_version + '.0'

def marker_env(python_version:str)->dict:
    "The PEP 508 marker variables of CPython `python_version` on x86-64 Linux."
    python_version = '.'.join(full_version(python_version).split('.')[:2])
    return {'python_version': python_version, 'python_full_version': full_version(python_version), 'os_name': 'posix',
            'sys_platform': 'linux', 'platform_system': 'Linux', 'platform_machine': 'x86_64',
            'platform_python_implementation': 'CPython', 'implementation_name': 'cpython',
            'implementation_version': python_version + '.0', 'platform_release': '', 'platform_version': ''}

def roots()->list:
    "The closure's starting requirements: pyproject's core dependencies, `EXTRAS` (expanded), and `TOOLS`."
    import tomllib
    proj = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']
    extras, out, todo = proj['optional-dependencies'], list(proj['dependencies']), list(EXTRAS)
    seen = set()
    while todo:
        e = todo.pop()
        if e in seen: continue
        seen.add(e)
        for r in extras[e]:
            m = re.match(r'silhouette-nb\[([^\]]+)\]', r)
            if m: todo += [x.strip() for x in m.group(1).split(',')]
            else: out.append(r)
    return out + list(TOOLS)

def closure(python_version:str='3.12', # the target Python, for the markers
            have=GPU_HAS, # names the target already has: the walk stops there
           )->tuple:
    """(bundle, gpu_requirements): `bundle` maps each needed distribution missing on the target to its version here
    and the packages that require it; `gpu_requirements` maps each package of `have` that something in the bundle
    requires to the requirement strings and who states them."""
    from packaging.requirements import Requirement
    env, have = marker_env(python_version), {norm(n) for n in have}
    todo = [(r, 'silhouette-nb') for r in map(Requirement, roots()) if r.marker is None or r.marker.evaluate({**env, 'extra': ''})]
    bundle, gpu_req = {}, {}
    while todo:
        req, by = todo.pop(0)
        name = norm(req.name)
        if name in EXCLUDE or name == 'silhouette-nb': continue
        if name in have:
            gpu_req.setdefault(name, []).append(f"{req} (by {by})"); continue
        try: dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            raise SystemExit(f"gpu-bundle: {req} (needed by {by}) is not installed here: install the project's "
                             f"[dev] extras first (`make venv`), the bundle takes the versions tested here")
        if name in bundle:
            bundle[name]['required_by'] = sorted(set(bundle[name]['required_by']) | {by}); continue
        bundle[name] = {'name': name, 'version': dist.version, 'required_by': [by]}
        for r in dist.requires or []:
            r = Requirement(r)
            for extra in set(req.extras) | {''}:
                if r.marker is None or r.marker.evaluate({**env, 'extra': extra}):
                    todo.append((r, name)); break
    return bundle, gpu_req

def _pure_installed(name):
    "Whether the distribution installed here came from a pure-Python wheel (a `Tag: ...-none-any` line in its WHEEL file)."
    w = md.distribution(name).read_text('WHEEL') or ''
    return bool(re.search(r'^Tag: .*-none-any$', w, re.M))

def _download(specs, dest, python_version, pure):
    "pip download of `specs` (name==version) into `dest`, pure wheels only or for CPython `python_version` on manylinux."
    abi = 'cp' + python_version.replace('.', '')
    tags = (['--implementation', 'py', '--abi', 'none', '--platform', 'any'] if pure else
            ['--implementation', 'cp', '--abi', abi, '--abi', 'abi3', '--abi', 'none', *[a for p in PLATFORMS for a in ('--platform', p)]])
    cmd = [sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', '--only-binary=:all:', '--python-version',
           full_version(python_version), *tags, '-d', str(dest), *specs]
    return subprocess.run(cmd, capture_output=True, text=True)

def _wheel_name(f):
    "The normalised project name and version in a wheel's file name."
    n, v = f.name.split('-')[:2]
    return norm(n), v

def build(python_version:str='3.12', # the target Python: the compiled wheels are fetched for it
          out:str|Path|None=None, # the folder of the wheels; BUNDLE/cp312 for 3.12
          max_mib:float=MAX_MIB, # fail above this many MiB of wheels
         )->dict: # the manifest
    "Fetch the bundle's wheels (those already in `out` at the right version are kept), write `out/manifest.json`."
    python_version = '.'.join(python_version.split('.')[:2])
    out = Path(out) if out else BUNDLE/('cp' + python_version.replace('.', ''))
    out.mkdir(parents=True, exist_ok=True)
    bundle, gpu_req = closure(python_version)
    have = {_wheel_name(f): f for f in out.glob('*.whl')}
    for f in out.glob('*.whl'):   # a wheel no longer in the bundle, or of another version: two versions stop an install
        if _wheel_name(f) not in {(n, b['version']) for n, b in bundle.items()}: f.unlink()
    missing = [b for n, b in bundle.items() if (n, b['version']) not in have]
    pure = [b for b in missing if _pure_installed(b['name'])]
    if pure and _download([f"{b['name']}=={b['version']}" for b in pure], out, python_version, True).returncode == 0:
        missing = [b for b in missing if b not in pure]   # one pip call for them all; else one by one below
    for b in missing:
        spec = f"{b['name']}=={b['version']}"
        if _download([spec], out, python_version, True).returncode == 0: continue   # a pure wheel of the same release
        r = _download([spec], out, python_version, False)
        if r.returncode: raise SystemExit(f"gpu-bundle: no wheel of {spec} for CPython {python_version} on manylinux x86-64:\n{r.stderr[-2000:]}")
    wheels = {_wheel_name(f)[0]: f for f in sorted(out.glob('*.whl'))}
    lost = sorted(set(bundle) - set(wheels))
    if lost: raise SystemExit(f"gpu-bundle: no wheel came for {', '.join(lost)}")
    rows = []
    for n, b in sorted(bundle.items()):
        f = wheels[n]
        rows.append({**b, 'file': f.name, 'bytes': f.stat().st_size, 'pure': f.name.endswith('-none-any.whl'),
                     'sha256': hashlib.sha256(f.read_bytes()).hexdigest()})
    total = sum(r['bytes'] for r in rows)
    man = {'python_version': python_version, 'python_full_version': full_version(python_version), 'platforms': list(PLATFORMS), 'made': time.strftime('%Y-%m-%d %H:%M:%S'),
           'total_bytes': total, 'total_mib': round(total / 2**20, 2), 'max_mib': max_mib, 'wheels': rows,
           'gpu_requirements': {k: sorted(set(v)) for k, v in sorted(gpu_req.items())}, 'excluded': EXCLUDE,
           'gpu_has_source': '/work/.library/device/KINDS.md, "Python packages already there" (2026-11-17)'}
    (out/'manifest.json').write_text(json.dumps(man, indent=1) + '\n')
    if total > max_mib * 2**20:
        raise SystemExit(f"gpu-bundle: {len(rows)} wheels, {total / 2**20:.1f} MiB: over the {max_mib} MiB goal (manifest in {out})")
    return man

def offline_venv(dest:str|Path, # the new venv's folder
                 have=GPU_HAS, # the packages to make visible: the GPU machine's
                )->Path: # its python
    """A fresh venv that holds, of what this Python has installed, only the distributions named in `have` (torch,
    torchvision, numpy, pytest...: what the GPU machine has), as symbolic links in `dest/gpu-site`, which a `.pth` adds
    to its path; fastai, fastcore, pytorch-metric-learning, nbdev... stay out. For rehearsing the GPU machine's set-up."""
    dest = Path(dest)
    subprocess.run([sys.executable, '-m', 'venv', '--clear', str(dest)], check=True, capture_output=True)
    py = dest/'bin'/'python'
    site = dest/'gpu-site'; site.mkdir(exist_ok=True)
    have, linked = {norm(n) for n in have}, []
    for dist in md.distributions():
        if norm(dist.metadata['Name'] or '') not in have: continue
        for top in sorted({Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith('..')}):
            src, dst = Path(dist.locate_file(top)), site/top
            if src.exists() and not dst.exists() and not os.path.lexists(dst): dst.symlink_to(src); linked.append(top)
    purelib = subprocess.run([str(py), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib)/'_gpu_machine.pth').write_text(f"import site; site.addsitedir({str(site)!r})\n")
    return py

def summary(man:dict)->str:
    "One line per wheel, largest first, then the total."
    rows = sorted(man['wheels'], key=lambda r: -r['bytes'])
    lines = [f"{r['bytes'] / 2**20:7.2f} MiB  {r['file']}{'' if r['pure'] else '  (compiled)'}" for r in rows]
    return '\n'.join(lines + [f"gpu-bundle: {len(rows)} wheels for Python {man['python_version']}, {man['total_mib']:.1f} MiB "
                              f"(goal < {man['max_mib']} MiB), {sum(not r['pure'] for r in rows)} compiled"])

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--python-version', default='3.12', help="the target's Python (default 3.12, the GPU machine's)")
    ap.add_argument('--out', default=None, help="the folder of the wheels (default .gpu-bundle/cpXY)")
    ap.add_argument('--max-mib', type=float, default=MAX_MIB, help=f"fail above this size (default {MAX_MIB})")
    a = ap.parse_args(argv)
    man = build(a.python_version, a.out, a.max_mib)
    print(summary(man))
    print(f"gpu-bundle: manifest in {Path(a.out) if a.out else BUNDLE/('cp' + man['python_version'].replace('.', ''))}/manifest.json")
    return 0

if __name__ == '__main__':
    sys.exit(main())
