"""Reading PyTorch checkpoints without running code from them (docs/METER.md section 1, Security).

Two ways a checkpoint can run code when ``torch.load`` reads it, and what stops each:

* **The container.** ``torch.load`` picks a loader from the file's bytes: a zip holding
  ``constants.pkl`` is a TorchScript archive and goes to ``torch.jit.load``, which compiles and
  runs the archive's ``code/`` (e.g. a ``__setstate__`` that writes files with
  ``torch.from_file(..., shared=True)``) and never uses ``pickle_module``. A legacy tar is
  extracted to disk. :func:`check_checkpoint_file` therefore inspects the file *before* any
  loader sees it, in ``torch.load``'s own dispatch order: a zip must hold exactly the records
  ``torch.save`` writes (``data.pkl``, ``data/<n>``, ``version`` or ``.data/version``,
  ``byteorder``, ``.format_version``, ``.storage_alignment``, ``.data/serialization_id``, one
  directory prefix, listed alike by torch's zip reader and Python's ``zipfile``); a tar must hold
  only the regular files of the pre-2017 format; anything else must be safetensors (an 8-byte
  header length then a JSON header) or a pickle (protocol opcode ``0x80``). TorchScript and other
  archives raise :class:`UnsafeCheckpointError`; other bytes raise
  :class:`~bids_vlm.errors.DataError`.
* **The pickle.** :func:`safe_torch_load` unpickles with a ``find_class`` that returns the real
  object only for what a state dict needs (torch's own allow-list for ``weights_only`` loading:
  tensor and storage rebuilders, dtypes, ``collections.OrderedDict``, builtin containers) plus
  numpy scalars. Every other global (e.g. the pytorch-lightning ``ModelCheckpoint`` class that
  keys a checkpoint's ``callbacks``) becomes an inert stand-in class: it may be referenced, or
  instantiated with its state stored as data, but *calling* it, as a pickle does to run code,
  raises :class:`UnsafeCheckpointError` before anything runs. The unpickler is Python's own
  (not the C one) so that BUILD can be refused on a class or function: that would set
  attributes of an allowed global (``torch._utils._rebuild_tensor_v2.__defaults__``) for the
  whole process. Python-2 names of protocol-2 pickles are mapped as ``pickle`` maps them.

Decision: ``data.pkl`` is still unpickled by ``torch.load(pickle_module=...)``, not by a reader of
our own. Once the container check has passed, ``torch.load`` can only take its ``torch.save``
zip or legacy-pickle path, and both unpickle through the given module; rebuilding storages
ourselves would copy torch internals (dtypes, byte order, storage alignment and offsets) that
change between releases. The check and the load read the same open file, so the file cannot be
swapped in between. Loaders that are not ours (open_clip, transformers) read with
``weights_only=True``; :func:`vet_checkpoint` runs both checks first (the pickle with tensors on
the ``meta`` device, reading no weights), for a clear refusal (exit 64) rather than their own
error, and as a second line of defence.
"""
from __future__ import annotations

import _compat_pickle
import importlib
import io
import json
import pickle
import re
import tarfile
import types
import zipfile

import torch

from bids_vlm.errors import DataError, UnsafeCheckpointError

__all__ = ["TORCH_FORMATS", "UnsafeCheckpointError", "check_checkpoint_file",
           "checkpoint_format", "safe_torch_load", "vet_checkpoint"]

_EXTRA_ALLOWED = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype",
                  "builtins.dict", "builtins.list", "builtins.tuple", "builtins.frozenset",
                  "builtins.slice")
# what torch.save writes into its zip (under one directory prefix), besides data/<n>
ZIP_RECORDS = frozenset({"data.pkl", "version", ".data/version", "byteorder", ".format_version",
                         ".storage_alignment", ".data/serialization_id"})
_STORAGE_RECORD = re.compile(r"data/[0-9]+")
_TORCHSCRIPT_RECORDS = ("constants.pkl", "bytecode.pkl")  # and the folders code/, extra/
# the regular files of torch.save's tar format (PyTorch < 0.1.10)
TAR_MEMBERS = frozenset({"sys_info", "pickle", "storages", "tensors"})
_REFUSED = "refused, and nothing from it was run"
TORCH_FORMATS = ("zip", "tar", "pickle")  # what torch.load reads (and may run code from)


def _allowed_globals() -> dict:
    """{"module.name": object} that may be returned to the unpickler."""
    allowed = {}
    try:  # torch's allow-list for weights_only loading (private, but the reference list)
        # local import: torch's private unpickler, looked up only to vet a pickle checkpoint
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


def _py3_name(module: str, name: str) -> tuple[str, str]:
    """The Python 3 name of a global that a protocol-2 pickle (``torch.save``'s legacy format)
    spells the Python 2 way (``__builtin__.set``), as the default ``find_class`` maps it."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _refuse_shared_target(target) -> None:
    """BUILD sets the attributes of the object below it; on a class or function (an allowed
    global such as ``torch._utils._rebuild_tensor_v2``) that would change it for the whole
    process, which no state dict needs."""
    if isinstance(target, (type, types.FunctionType, types.BuiltinFunctionType,
                           types.ModuleType)):
        name = getattr(target, "qualified_name", "") or getattr(target, "__qualname__", target)
        raise UnsafeCheckpointError(
            f"the checkpoint asks to set attributes of '{name}' while loading; a state dict "
            "never needs that, so the file was refused")


def _pickle_module():
    """A module-like object for ``torch.load(pickle_module=...)``."""
    allowed = _allowed_globals()

    class SafeUnpickler(pickle._Unpickler):  # the Python one: its BUILD can be guarded
        dispatch = dict(pickle._Unpickler.dispatch)

        def find_class(self, module, name):
            qualified = ".".join(_py3_name(module, name))
            if qualified in allowed:
                return allowed[qualified]
            return _stand_in(qualified)

        def load_build(self):
            _refuse_shared_target(self.stack[-2])
            pickle._Unpickler.load_build(self)

        dispatch[pickle.BUILD[0]] = load_build

    namespace = types.ModuleType("bids_vlm_safe_pickle")
    namespace.Unpickler = SafeUnpickler
    namespace.load = lambda file, **kwargs: SafeUnpickler(file, **kwargs).load()
    namespace.__name__ = "bids_vlm_safe_pickle"
    return namespace


def checkpoint_format(path) -> str:
    """``"zip"``, ``"tar"``, ``"safetensors"``, ``"pickle"`` or ``""`` (none of them): what the
    bytes of ``path`` are, tested in ``torch.load``'s order. Reads only the start of the file
    (and a safetensors header)."""
    with _opened(path) as handle:
        return _sniff(handle)


def check_checkpoint_file(path) -> str:
    """Inspect ``path`` before any loader reads it; returns its :func:`checkpoint_format`.

    Raises :class:`UnsafeCheckpointError` for a TorchScript archive or any zip or tar that is
    not laid out as ``torch.save`` writes it, and :class:`~bids_vlm.errors.DataError` for a file
    that is not a PyTorch checkpoint (nor safetensors) or cannot be read. Runs nothing from it
    and does not unpickle it (:func:`vet_checkpoint` does both checks).
    """
    with _opened(path) as handle:
        return _check_open_file(handle, path)


def _check_open_file(handle, path) -> str:
    kind = _sniff(handle)
    if not kind:
        raise DataError("not a PyTorch checkpoint: neither a torch.save zip, a pickle nor "
                        "safetensors", path)
    if kind == "zip":
        _check_zip_records(_zip_records(handle, path), path)
    elif kind == "tar":
        _check_tar(handle, path)
    handle.seek(0)
    return kind


def _sniff(handle) -> str:
    head = handle.read(9)
    handle.seek(0)
    if head[:4] == b"PK\x03\x04":  # torch.load's own zip test
        return "zip"
    if _is_tar(handle):  # torch.load tries tar before pickle
        return "tar"
    if _is_safetensors(handle, head):
        return "safetensors"
    return "pickle" if head[:1] == b"\x80" else ""


def _is_safetensors(handle, head: bytes) -> bool:
    """An 8-byte header length, then that many bytes of a JSON object (not just a "{": a
    pickle can start with bytes that look like a length and a brace)."""
    size = handle.seek(0, io.SEEK_END)
    length = int.from_bytes(head[:8], "little") if len(head) == 9 else 0
    try:
        if head[8:] != b"{" or not 2 <= length <= min(size - 8, 100 << 20):
            return False
        handle.seek(8)
        return isinstance(json.loads(handle.read(length)), dict)
    except (ValueError, UnicodeDecodeError):
        return False
    finally:
        handle.seek(0)


def _is_tar(handle) -> bool:
    try:
        with tarfile.open(fileobj=handle, mode="r:"):
            return True
    except (tarfile.TarError, EOFError, ValueError, OSError):
        return False
    finally:
        handle.seek(0)


def _zip_records(handle, path) -> list[str]:
    """Record names as torch's zip reader lists them (directory prefix removed), refused unless
    Python's ``zipfile`` lists the same names under a single prefix."""
    try:
        records = list(torch._C.PyTorchFileReader(handle).get_all_records())
        handle.seek(0)
        names = zipfile.ZipFile(handle).namelist()
    except (RuntimeError, OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise DataError(f"cannot read the checkpoint (truncated or not a PyTorch file?): "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                        path) from None
    finally:
        handle.seek(0)
    prefixes = {name.partition("/")[0] for name in names}
    if len(prefixes) != 1 or sorted(n.partition("/")[2] for n in names) != sorted(records):
        raise UnsafeCheckpointError(
            f"a zip whose contents read differently to torch and to Python ({len(names)} "
            f"entries under {len(prefixes)} folders); torch.save never writes that: {_REFUSED}",
            path)
    return records


def _check_zip_records(records, path) -> None:
    """Refuse a TorchScript archive, and any record, duplicate or absence ``torch.save``'s
    layout does not have."""
    script = sorted(r for r in records if r in _TORCHSCRIPT_RECORDS
                    or r.startswith(("code/", "extra/")))
    if script:
        raise UnsafeCheckpointError(
            f"a TorchScript archive (it holds {', '.join(script[:4])}), whose code runs when it "
            f"is loaded; only weights saved with torch.save or safetensors are read: {_REFUSED}",
            path)
    odd = sorted(r for r in records if r not in ZIP_RECORDS and not _STORAGE_RECORD.fullmatch(r))
    if odd or len(set(records)) != len(records):
        what = f"records torch.save never writes ({', '.join(odd[:4])})" if odd else \
            "records that appear twice"
        raise UnsafeCheckpointError(f"a zip with {what}: {_REFUSED}", path)
    if "data.pkl" not in records:
        raise DataError("not a PyTorch checkpoint: a zip without data.pkl", path)


def _check_tar(handle, path) -> None:
    """Refuse a tar unless it holds only the regular files of torch.save's legacy tar format
    (torch extracts them to disk, so links or other names must not reach it)."""
    try:
        with tarfile.open(fileobj=handle, mode="r:") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, EOFError) as exc:
        raise DataError(f"cannot read the checkpoint (a truncated tar?): {exc}", path) from None
    finally:
        handle.seek(0)
    names = [m.name for m in members]
    if not all(m.isreg() for m in members) or len(set(names)) != len(names) or \
            not {"pickle", "storages", "tensors"} <= set(names) <= TAR_MEMBERS:
        raise UnsafeCheckpointError(
            f"a tar archive that is not a legacy torch.save checkpoint (members: "
            f"{', '.join(sorted(names)[:6])}): {_REFUSED}", path)


def safe_torch_load(path):
    """``torch.load`` of ``path`` on the CPU, after :func:`check_checkpoint_file`, with the safe
    unpickler (a safetensors file is read with safetensors).

    Raises :class:`UnsafeCheckpointError` for a file that would run code, and
    :class:`~bids_vlm.errors.DataError` (naming the file) for one that cannot be read.
    """
    return _safe_load(path, "cpu")


def vet_checkpoint(path) -> str:
    """Refuse ``path`` as :func:`safe_torch_load` would, before another loader (open_clip,
    transformers) reads it: :func:`check_checkpoint_file`, then the safe unpickler over its
    pickle with tensors on the ``meta`` device, so that no tensor data is read. Returns the
    :func:`checkpoint_format`."""
    with _opened(path) as handle:
        kind = _check_open_file(handle, path)
        if kind != "safetensors":
            _unpickle(handle, path, "meta")
        return kind


def _safe_load(path, device):
    with _opened(path) as handle:
        if _check_open_file(handle, path) == "safetensors":
            from safetensors.torch import load_file  # only for safetensors files

            return load_file(str(path), device=device)
        return _unpickle(handle, path, device)


def _opened(path):
    try:
        return open(path, "rb")
    except OSError as exc:
        raise DataError(f"cannot read the checkpoint: {exc.strerror or exc}", path) from exc


def _unpickle(handle, path, device):
    """``torch.load`` of an open file that passed :func:`_check_open_file`."""
    try:
        return torch.load(handle, map_location=device, weights_only=False, mmap=False,
                          pickle_module=_pickle_module())
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(str(exc), path) from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise DataError(f"cannot read the checkpoint (truncated or not a PyTorch file?): "
                        f"{type(exc).__name__}: {exc}", path) from exc
