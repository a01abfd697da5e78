"""The floors, read from the source with ``ast``: which package may import which, and no import cycles.

Floors, lowest first: errors, gc_pause, numba_setup and precision (the ground); arch, kernels, workloads; mapping;
sim; report; app; cli. A module may import its own floor and the ones below. Every import counts, including those
inside functions, so a cycle cannot hide in a function body.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
# package folder -> its import name (kernels/ and workloads/ install inside wse_sim)
SOURCES = {ROOT / "wse_sim": "wse_sim", ROOT / "kernels": "wse_sim.kernels", ROOT / "workloads": "wse_sim.workloads"}
FLOOR = {"errors": 0, "gc_pause": 0, "numba_setup": 0, "precision": 0, "arch": 1, "kernels": 1, "workloads": 1,
         "mapping": 2, "sim": 3, "report": 4, "app": 5, "cli": 6}
# arch, kernels and workloads share a floor but do not lean on each other except where listed
SIDEWAYS = {("workloads", "kernels")}
# gc_pause: the command pauses the collector around its own imports (of the app), so it cannot go through the app.
CLI_MAY_IMPORT = {"app", "report", "errors", "gc_pause", "cli"}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, name in SOURCES.items():
        for path in folder.rglob("*.py"):
            if name == "wse_sim" and path.relative_to(folder).parts[0] in ("kernels", "workloads"):
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([name, *parts])] = path
    return out


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``module`` imports (relative imports resolved; ``from pkg import mod`` counts mod)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != module:
                found.add(t)
    return found


def _graph() -> nx.DiGraph:
    mods = _modules()
    g = nx.DiGraph()
    for m, p in mods.items():
        g.add_node(m)
        g.add_edges_from((m, t) for t in _imports(m, p, set(mods)))
    return g


def _area(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_the_reader_finds_the_floors():
    g = _graph()
    assert {"wse_sim.app.run", "wse_sim.cli", "wse_sim.kernels.gemm", "wse_sim.workloads.graph"} <= set(g)
    assert g.has_edge("wse_sim.app.run", "wse_sim.app.prefill")
    assert g.has_edge("wse_sim.workloads.weights", "wse_sim.errors")


def test_no_floor_imports_a_floor_above_it():
    wrong = []
    for a, b in _graph().edges:
        fa, fb = _area(a), _area(b)
        if fa is None or fb is None or fa == fb or (fa, fb) in SIDEWAYS:
            continue
        if FLOOR[fb] >= FLOOR[fa]:
            wrong.append(f"{a} -> {b}")
    assert not wrong, "imports that go up or sideways:\n" + "\n".join(sorted(wrong))


def test_cli_imports_only_app_and_report():
    wrong = [f"{a} -> {b}" for a, b in _graph().edges if _area(a) == "cli" and _area(b) not in CLI_MAY_IMPORT]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles():
    g = _graph()
    # a package's __init__ importing its own modules is not a cycle of design; leave those edges out
    g.remove_edges_from([(a, b) for a, b in list(g.edges) if b.startswith(a + ".")])
    cycles = [c for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


# Attributes only the app's input records have (the CLI's own vocabulary): reading them below the app means a
# RunSpec (or a duck-typed copy of one) was passed down.
RECORD_ONLY = {"RunSpec", "GemmSpec", "checkpoint", "prompt_len", "gen_tokens", "layer_subset"}


def test_no_cli_record_below_the_app():
    """The input records (RunSpec, GemmSpec) belong to the app: lower floors get plain values instead."""
    leaks = []
    for module, path in _modules().items():
        if _area(module) in ("app", "cli"):
            continue
        tree = ast.parse(path.read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        leaks += [f"{module}: {n}" for n in sorted(RECORD_ONLY & names)]
    assert not leaks, leaks
