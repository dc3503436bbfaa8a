"""A simulation, on this machine's Python, of the lent GPU machine's image: what ``bench/gpu_check.sh`` may import there.

That machine (docs/development.md, "The GPU check") has its own Python with a fixed set of packages and reaches no
network: whatever else the check imports must come from the wheels ``bench/gpu_wheels.sh`` prepares, installed into one
folder on PYTHONPATH. ``install(directory)`` writes a ``sitecustomize.py`` there; put the folder first on PYTHONPATH and
every Python process started with it (the check's parts, pytest, their children) can import only

- the standard library,
- the packages of the image (``IMAGE_DISTRIBUTIONS``, as read off such a machine) as installed here, with what they
  require here,
- modules found on a PYTHONPATH entry outside this interpreter's own prefix: the project, and the wheels' folder.

Importing anything else (a package this machine's virtual environment has but the image lacks) raises
ModuleNotFoundError naming it, as it would there. What it cannot simulate: the image's own versions (Python 3.12,
torch 2.11, transformers 5.17 against 3.11 / 2.13 / 5.23 here) and CUDA.
"""

from __future__ import annotations

from pathlib import Path

# The distributions on the lent machines' image ('cuda'; the device tool's KINDS.md, read 2026-11-17).
IMAGE_DISTRIBUTIONS = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript opencv-python-headless
optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp
""".split()

_HOOK = '''\
"""Written by musicgen_dev.gpu_image: this interpreter sees only what the GPU machine's image has."""
import sys

_DROP = set({site_packages!r})
sys.path[:] = [p for p in sys.path if p not in _DROP] + [{image_site!r}]
'''


def _normal(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")



def image_distributions(site_packages: list[str]) -> dict[str, object]:
    """The distributions of ``site_packages`` that stand for the image's: the image's own, and what they require
    here (this machine's newer versions may need packages the image's versions do not; they come with them)."""
    from importlib import metadata
    from packaging.requirements import Requirement

    installed = {_normal(d.metadata["Name"]): d for d in metadata.distributions(path=site_packages)}
    wanted, todo = set(), [_normal(d) for d in IMAGE_DISTRIBUTIONS]
    while todo:
        name = todo.pop()
        if name in wanted or name not in installed:
            continue
        wanted.add(name)
        for line in installed[name].requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(_normal(requirement.name))
    return {name: installed[name] for name in wanted}


def install(directory: str | Path) -> Path:
    """Make ``directory`` the simulation: ``directory/image-site`` holds links to the image's packages among this
    interpreter's site-packages (their modules and metadata), and ``directory/sitecustomize.py`` puts it in place
    of site-packages. Put ``directory`` first on PYTHONPATH to use it; returns the folder of links."""
    import site

    directory = Path(directory).resolve()
    image_site = directory / "image-site"
    image_site.mkdir(parents=True, exist_ok=True)
    site_packages = [p for p in site.getsitepackages() if Path(p).is_dir()]
    for dist in image_distributions(site_packages).values():
        root = Path(dist._path).parent  # the site-packages folder it is installed in
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            entry = root / top
            if entry.suffix == ".pth" or top == "__pycache__" or not entry.exists():
                continue
            link = image_site / top
            if not link.exists():
                link.symlink_to(entry)
    (directory / "sitecustomize.py").write_text(
        _HOOK.format(site_packages=site_packages, image_site=str(image_site)))
    return image_site
