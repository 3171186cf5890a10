"""BIDS file names: building them (:func:`bids_name`, the labels of models, streams and layers)
and parsing them (:func:`parse_name`), for the derivatives this package writes and reads back.

The parser follows the BIDS file-name grammar (``key-value`` entities joined by ``_``, then
the suffix and the extension) instead of pybids' ``parse_file_entities``: that one drops
``sub-`` from a bare file name (it takes the subject from the folder) and knows no ``stat``
entity, and the group level reads names of every entity this package writes.
"""
from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ENTITY_ORDER = ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "echo", "space", "den", "desc",
                "stat")


def bids_name(entities: dict, suffix: str, extension: str) -> str:
    """``sub-01_task-x_desc-y_suffix.ext`` with entities in BIDS order (None values skipped)."""
    parts = [f"{k}-{entities[k]}" for k in ENTITY_ORDER if entities.get(k) not in (None, "")]
    return "_".join(parts + [suffix]) + extension


def label(text: str) -> str:
    """``text`` with every non-alphanumeric character removed (a valid BIDS entity value),
    e.g. ``cross-image`` -> ``crossimage``."""
    return re.sub(r"[^A-Za-z0-9]", "", text)


_PLAIN_MODEL = re.compile(r"[A-Za-z0-9-]+")  # registered names (and their ``-qk`` form)
_PLAIN_LABEL = re.compile(r"[A-Za-z0-9_-]+")
_WEIGHTS_EXTENSION = re.compile(r"\.(safetensors|bin|pth?|ckpt|npz|h5)$", re.IGNORECASE)
READABLE_MAX = 40  # characters of a spec's readable part in labels and node names


def is_plain_model(model: str) -> bool:
    """A name of letters, digits and '-' only (a registered model), which maps to node names
    and labels one to one without a hash; every spec (``open_clip:``, ``hf-clip:``) has a ':'."""
    return bool(_PLAIN_MODEL.fullmatch(model))


def model_hash(model: str) -> str:
    """8 hex digits of the SHA-256 of the full model name: what keeps the labels of two model
    specs apart when their readable parts are the same (e.g. two ``x.safetensors`` files)."""
    return hashlib.sha256(model.encode("utf-8")).hexdigest()[:8]


def model_words(model: str) -> list[str]:
    """The readable words of a model name, in order.

    Registered names split at '-' (``tiny-clip`` -> tiny, clip). Specs split at ':'; a part that
    is a file or folder path (absolute, ``~`` or ``.``, several '/', or a weights file) gives
    only its last component without the weights extension, a hub id (``org/name``) all of it:
    ``open_clip:ViT-B-32:/models/vitb32_random.safetensors`` -> open, clip, ViT, B, 32,
    vitb32, random; ``hf-clip:openai/clip-vit-base-patch32`` -> hf, clip, openai, clip, vit,
    base, patch32. A trailing ``-qk`` (attn ANs) stays the last word.
    """
    if is_plain_model(model):
        return [w for w in model.split("-") if w]
    suffix = []
    if model.endswith("-qk"):
        model, suffix = model[:-3], ["qk"]
    words = []
    for part in model.split(":"):
        path = part.replace("\\", "/")
        if (_WEIGHTS_EXTENSION.search(path) or path.startswith(("/", "~", "."))
                or path.rstrip("/").count("/") > 1):
            path = _WEIGHTS_EXTENSION.sub("", path.rstrip("/").rsplit("/", 1)[-1])
        words += re.findall(r"[A-Za-z0-9]+", path)
    return words + suffix


def model_label(model: str) -> str:
    """The alphanumeric model part of desc labels: a registered name without its '-' (and '_')
    (``clip-vit-b-32`` -> ``clipvitb32``); a spec's readable words (at most 40 characters),
    lower case, and :func:`model_hash` (``open_clip:ViT-B-32:/m/x.safetensors`` ->
    ``openclipvitb32x`` + 8 hex digits), so that every spec gets its own label."""
    if _PLAIN_LABEL.fullmatch(model):  # a name without ':' '/' '.': no spec, no path
        return re.sub(r"[^A-Za-z0-9]", "", model).lower()
    return "".join(model_words(model)).lower()[:READABLE_MAX] + model_hash(model)


def desc_label(model: str, stream: str = "", layer: int | None = None) -> str:
    """Alphanumeric desc label, e.g. ``clipvitb32Image07`` or ``tinyclipCrossText``
    (:func:`model_label`, the stream capitalised, the layer on 2 digits)."""
    label = model_label(model)
    label += "".join(w.capitalize() for w in re.split(r"[^A-Za-z0-9]", stream) if w)
    return label + (f"{layer:02d}" if layer is not None else "")


def an_id(model: str, stream: str, layer: int, index: int, kind: str = "ffn") -> str:
    """Stable AN id, e.g. ``clip-vit-b-32/image/07/1734`` (``.../07/qk12`` for attn ANs);
    index: the AN's index in its layer (the ``unit`` column of the neuron tables)."""
    return f"{model}/{stream}/{layer:02d}/{'qk' if kind == 'attn' else ''}{index}"


_ENTITY = re.compile(r"([a-z]+)-([A-Za-z0-9]+)")
_SUFFIX = re.compile(r"[A-Za-z0-9]+")


@dataclass(frozen=True)
class BIDSName:
    """A parsed BIDS file name: its entities (key, value) in the name's order, its suffix and
    its extension (everything from the first '.' of the last part, e.g. ``.dtseries.nii``)."""

    entities: tuple[tuple[str, str], ...]
    suffix: str
    extension: str

    def get(self, key: str) -> str | None:
        """The value of entity ``key``, or None."""
        return dict(self.entities).get(key)

    def rest(self, *without: str) -> str:
        """The name's entities except ``without``, as they appear (``task-x_space-y``)."""
        return "_".join(f"{k}-{v}" for k, v in self.entities if k not in without)


def parse_name(name: str) -> BIDSName | None:
    """``sub-01_task-x_desc-y_stat-r_statmap.nii.gz`` -> its :class:`BIDSName`; None when the
    name does not follow the grammar (a part that is not ``key-value``, a key twice, no
    suffix)."""
    stem, dot, extension = name.partition(".")
    *parts, suffix = stem.split("_")
    matches = [_ENTITY.fullmatch(p) for p in parts]
    if not parts or not all(matches) or not _SUFFIX.fullmatch(suffix):
        return None
    entities = tuple(m.groups() for m in matches)
    if len({k for k, _ in entities}) != len(entities):
        return None
    return BIDSName(entities, suffix, dot + extension)


def _parts(name: str) -> list[str]:
    """The ``_``-separated parts of a file name or stem, the last without its extension."""
    parts = str(name).split("_")
    return parts[:-1] + [parts[-1].partition(".")[0]]


def entity(name: str, key: str) -> str | None:
    """The value of entity ``key`` in a file name or stem, or None. Unlike
    :func:`parse_name` it takes any name, e.g. a group table's ``group_task-x_desc-y`` or an
    atlas ``myatlas_space-MNI152NLin6Asym.nii.gz``."""
    for part in _parts(name):
        match = _ENTITY.fullmatch(part)
        if match and match[1] == key:
            return match[2]
    return None


def without_entity(stem: str, key: str) -> str:
    """``stem`` without its ``key-value`` part (``sub-1_task-x_desc-y``, desc ->
    ``sub-1_task-x``)."""
    return "_".join(p for p in stem.split("_") if not p.startswith(f"{key}-"))


def unit_tables(output_dir, suffix) -> dict:
    """{(rest-of-name, desc): [(participant, path)]} of the analysis units' ``_<suffix>.tsv``
    tables (rest: the entities but sub, ses and desc, e.g. ``task-x_space-y``)."""
    found = defaultdict(list)
    for path in sorted(Path(output_dir).glob(f"sub-*/**/func/*_{suffix}.tsv")):
        name = parse_name(path.name)
        if name and name.get("sub") and name.get("desc") and name.suffix == suffix:
            found[(name.rest("sub", "ses", "desc"), name.get("desc"))].append(
                (name.get("sub"), path))
    return found
