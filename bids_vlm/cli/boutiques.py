"""The Boutiques descriptor of the command line, generated from the argparse parser so that the
two cannot drift (``boutiques.json`` at the top of the repository is this output; a test
compares them). Regenerate with ``python -m bids_vlm.cli.boutiques > boutiques.json``."""
from __future__ import annotations

import argparse
import json

from bids_vlm import __version__
from bids_vlm.cli.parser import build_parser

SKIP = {"help", "version", "list_models"}


def _input(action: argparse.Action) -> dict:
    key = f"[{action.dest.upper()}]"
    spec = {"id": action.dest, "name": action.dest.replace("_", " "), "value-key": key,
            "description": (action.help or action.dest).replace("%%", "%"),
            "optional": bool(action.option_strings) and not action.required}
    if action.option_strings:
        spec["command-line-flag"] = max(action.option_strings, key=len)
    if isinstance(action, (argparse._StoreTrueAction, argparse._CountAction)):
        spec["type"] = "Flag"
        return spec
    if action.type is int:
        spec.update(type="Number", integer=True)
    elif action.type is float or getattr(action.type, "__name__", "") in (
            "_fraction", "_positive_float", "_memory_gb"):
        spec["type"] = "Number"
    elif getattr(action.type, "__name__", "") == "_positive_int":
        spec.update(type="Number", integer=True, minimum=1)
    elif getattr(action.type, "__name__", "") == "_non_negative_int":
        spec.update(type="Number", integer=True, minimum=0)
    elif getattr(action.type, "__name__", "") == "_non_negative_float":
        spec.update(type="Number", minimum=0)
    elif action.dest in ("bids_dir", "bids_filter_file", "derivatives"):
        spec["type"] = "File"
    else:
        spec["type"] = "String"
    if action.nargs == "+":
        spec.update(list=True, **{"min-list-entries": 1})
    if action.choices:
        spec["value-choices"] = list(action.choices)
    default = action.default
    if default not in (None, [], "", False) and not action.nargs and spec["optional"]:
        spec["default-value"] = default
    return spec


def descriptor(parser: argparse.ArgumentParser) -> dict:
    inputs = [_input(a) for a in parser._actions if a.dest not in SKIP]
    return {
        "name": "bids_vlm", "tool-version": __version__, "schema-version": "0.5",
        "description": parser.description,
        "command-line": "bids_vlm " + " ".join(i["value-key"] for i in inputs),
        "inputs": inputs,
        "output-files": [{"id": "derivatives_dataset", "name": "BIDS-Derivatives dataset",
                          "path-template": "[OUTPUT_DIR]", "optional": False}],
        "tags": {"domain": ["neuroinformatics", "fmri", "bids-app"]},
    }


def main():
    print(json.dumps(descriptor(build_parser()), indent=2))


if __name__ == "__main__":
    main()
