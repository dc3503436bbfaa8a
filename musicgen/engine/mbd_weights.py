"""The published MultiBand Diffusion weights (``mbd_musicgen_32khz.th``, a torch pickle holding omegaconf configs)
converted once to ``mbd.safetensors`` + ``mbd.json``, the form ``musicgen.engine.mbd`` loads.

The pickle is read by a restricted unpickler: only the globals such a checkpoint needs are resolved (tensor
rebuilding, ``OrderedDict``/``defaultdict``, builtin containers and scalars, ``typing.Any``, and omegaconf's
classes as inert stand-ins that merely hold their pickled state, whatever omegaconf version wrote them); any
other global, the way a planted payload would run code, is refused before anything is called. omegaconf itself is
not needed. Of each band's config only what the decoder reads is kept (``BAND_KEYS``).
"""

from __future__ import annotations

import collections
import json
import pickle
import typing
from pathlib import Path

import torch

from musicgen.errors import WeightsNotFoundError

HUB_REPO, SOURCE = "facebook/multiband-diffusion", "mbd_musicgen_32khz.th"
SAFETENSORS, CONFIG = "mbd.safetensors", "mbd.json"
PROCESSOR_STATS = ("counts", "sum_x", "sum_x2", "sum_target_x2")


class _Pickled:
    """An omegaconf object as pickled: its state only (pickle's BUILD fills ``__dict__``)."""

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "dict"): dict, ("builtins", "list"): list, ("builtins", "tuple"): tuple,
    ("builtins", "set"): set, ("builtins", "int"): int, ("builtins", "float"): float, ("builtins", "str"): str,
    ("builtins", "bool"): bool, ("typing", "Any"): typing.Any,
}
_ALLOWED.update({("__builtin__", name): value for (module, name), value in list(_ALLOWED.items())
                 if module == "builtins"})  # protocol 2 pickles name them so
_STAND_INS: dict[tuple[str, str], type] = {}  # omegaconf's classes (any version's) -> inert stand-ins
BAND_KEYS = ("channels", "schedule", "diffusion_unet", "processor")  # what the decoder reads of a band's config


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        key = (module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        if module == "omegaconf" or module.startswith("omegaconf."):  # data only: no method of theirs runs
            return _STAND_INS.setdefault(key, type(name, (_Pickled,), {"__module__": __name__}))
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in MBD weights")


class _RestrictedPickle:
    """The ``pickle_module`` for ``torch.load``: its ``Unpickler`` resolves only the allowed globals."""

    Unpickler = _Unpickler
    load = staticmethod(lambda file, **kw: _Unpickler(file, **kw).load())
    __name__ = "musicgen.engine.mbd_weights"


def _plain(value):
    """A pickled omegaconf config as plain JSON values (dicts, lists, numbers, strings, None)."""
    if isinstance(value, _Pickled):
        if "_val" in value.__dict__:  # a node
            return _plain(value._val)
        content = value.__dict__.get("_content")
        if isinstance(content, dict):
            return {str(k): _plain(v) for k, v in content.items()}
        if isinstance(content, (list, tuple)):
            return [_plain(v) for v in content]
        return None  # a config set to None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise pickle.UnpicklingError(f"unexpected {type(value).__name__} in an MBD config")


def read_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, tensors) of an audiocraft ``mbd_*.th``: the JSON config (``sample_rate``, ``n_bands``, per-band
    ``bands``) and the tensors named ``{band}.model.*`` / ``{band}.processor.*``. WeightsNotFoundError, naming
    the file, when it is not such a checkpoint or its pickle asks for anything not allowed."""
    try:
        pkg = torch.load(path, map_location="cpu", pickle_module=_RestrictedPickle, weights_only=False)
        config = {"sample_rate": int(pkg["sample_rate"]), "n_bands": int(pkg["n_bands"]), "bands": []}
        tensors: dict[str, torch.Tensor] = {}
        for band in range(config["n_bands"]):
            entry = pkg[band]
            band_cfg = entry["cfg"].__dict__.get("_content") if isinstance(entry["cfg"], _Pickled) else entry["cfg"]
            if not isinstance(band_cfg, dict):
                raise pickle.UnpicklingError(f"band {band} has no config")
            config["bands"].append({k: _plain(band_cfg[k]) for k in BAND_KEYS if k in band_cfg})
            for part, state in (("model", entry["model_state"]), ("processor", entry["processor_state"])):
                for name, tensor in state.items():
                    if not isinstance(tensor, torch.Tensor):
                        raise pickle.UnpicklingError(f"{part} state {name} is not a tensor")
                    tensors[f"{band}.{part}.{name}"] = tensor.detach().contiguous()
    except (pickle.UnpicklingError, KeyError, TypeError, ValueError, RuntimeError, EOFError) as exc:
        raise WeightsNotFoundError(
            f"{path} is not MultiBand Diffusion weights this project can read ({exc}), so it was not loaded: "
            "run `python -m musicgen.hub --mbd` to download the published ones.") from None
    return config, tensors


def convert(directory: Path) -> list[Path]:
    """Write ``mbd.safetensors`` and ``mbd.json`` in ``directory`` from its ``mbd_musicgen_32khz.th``; returns
    their paths."""
    from musicgen.engine.layout import write_safetensors

    config, tensors = read_checkpoint(directory / SOURCE)
    write_safetensors(tensors, directory / SAFETENSORS, {"format": "pt", "converted_from": SOURCE})
    (directory / CONFIG).write_text(json.dumps(config, indent=1) + "\n")
    return [directory / SAFETENSORS, directory / CONFIG]


def has_weights(directory: Path) -> bool:
    return (directory / SAFETENSORS).is_file() and (directory / CONFIG).is_file()
