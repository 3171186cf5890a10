"""The import direction of the package, by pipeline stage (README "Layout"): a module imports
only modules of its own layer or of earlier ones, at the top of the module or inside a function
alike, and the modules import without cycles."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# earliest first; a module belongs to the layer of its longest matching prefix
LAYERS = [
    ("base", ["bids_vlm", "bids_vlm.errors", "bids_vlm.config", "bids_vlm.progress",
              "bids_vlm.logs", "bids_vlm.locks", "bids_vlm.atomic", "bids_vlm.threads",
              "bids_vlm.names", "bids_vlm.jit"]),
    ("inputs", ["bids_vlm.inputs", "bids_vlm.cifti", "bids_vlm.brainmask"]),
    # autocorrelation within runs: the cleaning's noise model and the association's null use it
    ("time series", ["bids_vlm.stats.autocorr"]),
    ("models and design", ["bids_vlm.models", "bids_vlm.design"]),
    ("stats and encoding", ["bids_vlm.stats", "bids_vlm.encoding"]),
    ("analysis", ["bids_vlm.analysis", "bids_vlm.simulate"]),
    ("derivatives", ["bids_vlm.derivatives"]),
    ("reports", ["bids_vlm.reports"]),
    ("workflows", ["workflows"]),
    ("execution", ["bids_vlm.runner", "bids_vlm.finished"]),
    ("cli", ["bids_vlm.cli", "bids_vlm.__main__"]),
]


def layer_of(module: str) -> int | None:
    """Index in :data:`LAYERS` of ``module`` (None outside the package and workflows)."""
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and \
                    (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    return None if best is None else best[0]


def _sources() -> dict:
    """{module name: path} of the package and workflows (the embedded data's scripts aside)."""
    out = {}
    for path in sorted([*(REPO / "bids_vlm").rglob("*.py"), *(REPO / "workflows").rglob("*.py")]):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if "data" in parts:
            continue
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported(path: Path) -> list[str]:
    """Every module an ``import`` or ``from ... import`` of the file names (anywhere in it)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def test_every_module_has_a_layer():
    sources = _sources()
    assert len(sources) > 60
    assert [m for m in sources if layer_of(m) is None] == []


def test_imports_go_from_later_stages_to_earlier_ones():
    offenders = []
    for module, path in _sources().items():
        mine = layer_of(module)
        for name in imported(path):
            other = layer_of(name)
            if other is not None and other > mine:
                offenders.append(f"{module} ({LAYERS[mine][0]}) imports {name} "
                                 f"({LAYERS[other][0]})")
    assert offenders == []


def test_the_check_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from bids_vlm.reports.participant import participant_report\n")
    assert "bids_vlm.reports.participant" in imported(bad)
    assert layer_of("bids_vlm.reports.participant") > layer_of("bids_vlm.stats.fdr")
    assert layer_of("bids_vlm.stats.autocorr") < layer_of("bids_vlm.design.cleaning")


def _graph() -> dict:
    """{module: the package's modules it imports}, a module's own parent packages aside."""
    sources = _sources()

    def resolve(name):
        while name and name not in sources:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name

    return {module: {resolve(n) for n in imported(path)} - {"", module}
            - {p for p in sources if module.startswith(p + ".")}
            for module, path in sources.items()}


def cycles(graph: dict) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of two or more
    modules (Tarjan's algorithm, iterative)."""
    index, low, on, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    part = []
                    while True:
                        member = stack.pop()
                        on.discard(member)
                        part.append(member)
                        if member == node:
                            break
                    if len(part) > 1:
                        found.append(sorted(part))
    return found


def test_no_import_cycles():
    """Counting the imports inside functions too (a cycle they hide is still a cycle)."""
    assert cycles(_graph()) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.slow
def test_the_package_imports_in_a_fresh_interpreter():
    """Every module, in one fresh interpreter, in the order of the layers."""
    order = sorted((m for m in _sources() if not m.endswith("__main__")),
                   key=lambda m: (layer_of(m), m))
    code = "import importlib\nfor m in %r:\n    importlib.import_module(m)\n" % order
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
