"""The command line's value checks: ``type=`` callables of the parser, each raising
``argparse.ArgumentTypeError`` (exit 2) with what is wrong with the value."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from bids_vlm.models import REGISTRY, hfclip, is_model_name, openclip
from bids_vlm.models.openclip import PREFIX, parse_generic


def _positive_int(value):
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {value}")
    return number


BANDED_WORDS = ("all", "last", "none")


def _banded_layer(value):
    """A --banded-layers value: all, last, none, or a layer index (0 or more)."""
    if value in BANDED_WORDS:
        return value
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected all, last, none or a layer index (0 or "
                                         f"more), not {value}")
    return str(number)


def _fraction(value):
    number = float(value)
    if not 0.0 < number < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), not {value}")
    return number


def _non_negative_int(value):
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, not {value}")
    return number


def _non_negative_float(value):
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive number, not {value}")
    return number


def _positive_float(value):
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {value}")
    return number


def _memory_gb(value):
    text = str(value).strip().upper().removesuffix("B").removesuffix("G")
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"memory must be a number of GB, like 16 or 16GB, "
                                         f"not {value}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"memory must be positive, not {value}")
    return number


def _model_name(value):
    if value.startswith(PREFIX):
        try:
            parse_generic(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
    if not is_model_name(value):
        raise argparse.ArgumentTypeError(f"unknown model '{value}' (choose from "
                                         f"{', '.join(sorted(REGISTRY))}, hf-clip:DIR or "
                                         "open_clip:ARCH:TAG_OR_FILE)")
    return _canonical_spec(value)


def _canonical_spec(value: str) -> str:
    """A model spec whose local file or folder is given as an absolute path, so that the graph's
    nodes (which run in their own folders) find it, and ``dir`` and ``./dir/`` are one model."""
    if value.startswith(openclip.PREFIX):
        arch, _, source = value[len(openclip.PREFIX):].partition(":")
        path = Path(source).expanduser()
        if path.is_file():
            return f"{openclip.PREFIX}{arch}:{path.resolve()}"
    elif value.startswith(hfclip.PREFIX):
        path = Path(value[len(hfclip.PREFIX):]).expanduser()
        if path.is_dir():
            return f"{hfclip.PREFIX}{path.resolve()}"
    return value


def _json_object(value):
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return json.dumps(data)


def _column_name(value):
    """An events column name: not empty, no tab, newline or other control character."""
    name = str(value).strip()
    if not name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise argparse.ArgumentTypeError(f"not an events column name: {value!r}")
    return name


def _existing_dir(value):
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"not a directory: {value}")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"directory does not exist: {value}")
    return path.resolve()


def _filter_file(value):
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"BIDS filter file not found: {value}")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"{value} must hold a JSON object")
    problem = _filter_problem(data)
    if problem:
        raise argparse.ArgumentTypeError(f"{value}: {problem}")
    return json.dumps(data)


def _filter_problem(data: dict) -> str:
    """What is wrong with a PyBIDS filter object ({"bold": {entity: value}}), or ""."""
    from bids.layout.models import Config  # pybids takes ~1 s to import

    known = set(Config.load("bids").entities) | set(Config.load("derivatives").entities)
    for query, filters in data.items():
        if not isinstance(filters, dict):
            return (f"the filters of '{query}' must be a JSON object of BIDS entities, e.g. "
                    f"{{\"{query}\": {{\"acquisition\": \"25mm\"}}}}, not {json.dumps(filters)}")
        unknown = sorted(set(filters) - known)
        if unknown:
            return (f"'{query}' filters on unknown BIDS entit{'y' if len(unknown) == 1 else 'ies'} "
                    f"{', '.join(unknown)} (known: {', '.join(sorted(known))})")
        for entity, wanted in filters.items():
            items = wanted if isinstance(wanted, list) else [wanted]
            if not all(v is None or isinstance(v, (str, int)) and not isinstance(v, bool)
                       for v in items):
                return (f"'{query}'.'{entity}' must be a string, a number, null or a list of "
                        f"them, not {json.dumps(wanted)}")
    return ""


def _atlas(value):
    from bids_vlm.analysis.atlases import SHIPPED  # nilearn and the atlases load only for --atlas

    return value if value in SHIPPED else str(Path(value).expanduser().resolve())
