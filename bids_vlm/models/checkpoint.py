"""Reading PyTorch checkpoints without running code from them (METER.md section 1, Security).

A ``.ckpt`` / ``.pt`` file is a pickle, and unpickling can call any function the file names.
:func:`safe_torch_load` unpickles with a ``find_class`` that returns the real object only for
what a state dict needs (torch's own allow-list for ``weights_only`` loading: tensor and storage
rebuilders, dtypes, ``collections.OrderedDict``, builtin containers) plus numpy scalars. Every
other global (e.g. the pytorch-lightning ``ModelCheckpoint`` class that keys a checkpoint's
``callbacks``) becomes an inert stand-in class: it may be referenced, or instantiated with its
state stored as data, but *calling* it, as a pickle does to run code, raises
:class:`UnsafeCheckpointError` before anything runs.
"""
from __future__ import annotations

import importlib
import pickle
import types

import torch

from bids_vlm.errors import DataError, UnsafeCheckpointError

_EXTRA_ALLOWED = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype",
                  "builtins.dict", "builtins.list", "builtins.tuple", "builtins.frozenset",
                  "builtins.slice")


def _allowed_globals() -> dict:
    """{"module.name": object} that may be returned to the unpickler."""
    allowed = {}
    try:  # torch's allow-list for weights_only loading (private, but the reference list)
        from torch import _weights_only_unpickler

        allowed.update(_weights_only_unpickler._get_allowed_globals())
    except (ImportError, AttributeError):
        for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter",
                     "_rebuild_parameter_with_state"):
            allowed[f"torch._utils.{name}"] = getattr(torch._utils, name)
        allowed.update({"collections.OrderedDict": __import__("collections").OrderedDict,
                        "torch.Size": torch.Size, "builtins.set": set})
    for qualified in _EXTRA_ALLOWED:
        module, _, name = qualified.rpartition(".")
        try:
            allowed[qualified] = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    return {k: v for k, v in allowed.items() if isinstance(k, str)}


class _RefuseCall(type):
    """Metaclass of the stand-ins: calling one (pickle's REDUCE) is refused."""

    def __call__(cls, *args, **kwargs):
        raise UnsafeCheckpointError(
            f"the checkpoint asks to call '{cls.qualified_name}' while loading; a state dict "
            "never needs that, so the file was refused and nothing from it was run")


class _StandIn(dict, metaclass=_RefuseCall):
    """Inert replacement of a global the loader does not trust (a dict, so that pickled dict
    subclasses such as pytorch-lightning's ``AttributeDict`` load as plain data)."""

    qualified_name = ""

    def __setstate__(self, state):
        self.__dict__["pickled_state"] = state


def _stand_in(qualified: str) -> type:
    return _RefuseCall(qualified.rpartition(".")[2], (_StandIn,), {"qualified_name": qualified})


def _pickle_module():
    """A module-like object for ``torch.load(pickle_module=...)``."""
    allowed = _allowed_globals()

    class SafeUnpickler(pickle.Unpickler):
        def find_class(self, module, name):
            qualified = f"{module}.{name}"
            if qualified in allowed:
                return allowed[qualified]
            return _stand_in(qualified)

    namespace = types.ModuleType("bids_vlm_safe_pickle")
    namespace.Unpickler = SafeUnpickler
    namespace.load = lambda file, **kwargs: SafeUnpickler(file, **kwargs).load()
    namespace.__name__ = "bids_vlm_safe_pickle"
    return namespace


def safe_torch_load(path):
    """``torch.load`` of ``path`` on the CPU with the safe unpickler.

    Raises :class:`UnsafeCheckpointError` for a file that would run code, and
    :class:`~bids_vlm.errors.DataError` (naming the file) for one that cannot be read.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=False,
                          pickle_module=_pickle_module())
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(str(exc), path) from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise DataError(f"cannot read the checkpoint (truncated or not a PyTorch file?): "
                        f"{type(exc).__name__}: {exc}", path) from exc
