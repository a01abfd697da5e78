"""The mapping registry: options, declared capabilities, and no mapping name compared as a string elsewhere."""

import ast
from pathlib import Path

import pytest
from wse_sim.workloads import lower_gemm

from wse_sim.arch import load_wafer
from wse_sim.errors import UserError
from wse_sim.mapping import MappingInfo, TileGrid, get_mapping, mapping_info, mapping_names
from wse_sim.mapping.gemv import two_way_tree
from wse_sim.mapping.resident import ResidentLayout

WSE2 = load_wafer("wse2")
PACKAGE = Path(__file__).resolve().parent.parent / "wse_sim"


def tree_levels(plan) -> int:
    return sum(1 for t in plan.ops[0].tasks if t.label.startswith("tree level") and t.label.endswith("row 0"))


def test_fan_in_option_changes_the_tree():
    graph = lower_gemm(1, 300, 200, "fp16")
    grid = TileGrid.make(48, 48, 1, 16)
    for fan_in in (2, 4, 16):
        plan = get_mapping("gemv-tree", fan_in=fan_in).plan(graph, WSE2, grid)
        assert tree_levels(plan) == len(two_way_tree(48, fan_in))
        assert f"two-way {fan_in}-ary tree" in plan.ops[0].notes
    default = get_mapping("gemv-tree").plan(graph, WSE2, grid)
    assert f"two-way {WSE2.reduce_fan_in}-ary tree" in default.ops[0].notes


def test_unknown_option_is_a_user_error():
    with pytest.raises(UserError, match="'summa' takes no option fan_in"):
        get_mapping("summa", fan_in=4)
    with pytest.raises(UserError, match="takes no option bogus"):
        get_mapping("gemv-tree", bogus=1)
    with pytest.raises(UserError, match="unknown mapping"):
        mapping_info("magic")
    assert "fan_in" in mapping_info("gemv-tree").options
    assert {"simulate", "fixed_tiles"} <= set(mapping_info("auto").options)


@pytest.mark.parametrize("name", mapping_names())
def test_every_mapping_declares_what_it_can_do(name):
    """The declared capabilities hold: checked on a single matmul on a non-square tile grid."""
    info = mapping_info(name)
    assert isinstance(info, MappingInfo) and info.name == name
    graph = lower_gemm(4, 64, 48, "fp16")
    grid = TileGrid.make(8, 12, 2, 3)
    mapping = get_mapping(name)
    if info.searches or info.whole_model:
        with pytest.raises(UserError):  # a search needs the engine injected; a whole-model mapping a model
            mapping.plan(graph, WSE2, grid)
        return
    if info.square_tiles:
        with pytest.raises(UserError, match="square"):
            mapping.plan(graph, WSE2, grid)
        grid = TileGrid.make(12, 12, 3, 3)
    plan = mapping.plan(graph, WSE2, grid)
    assert plan.mapping == name
    assert isinstance(mapping.layout(graph, WSE2, grid), ResidentLayout) == info.resident
    assert (plan.resident_bytes_per_pe > 0) == info.resident
    if info.gemv:
        assert "row reduction" in plan.ops[0].notes


def names_compared(tree: ast.AST, names: set[str]) -> list[int]:
    """Lines of comparisons with a registered mapping name as a string literal (``x == "auto"``, ``x in
    ("cannon", ...)``)."""
    def literals(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value
        elif isinstance(node, ast.Tuple | ast.List | ast.Set):
            for elt in node.elts:
                yield from literals(elt)

    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Compare)
            and any(s in names for side in (node.left, *node.comparators) for s in literals(side))]


def test_no_mapping_name_is_compared_outside_the_registry():
    names = set(mapping_names())
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "mapping" / "registry.py":
            continue
        found += [f"{path.relative_to(PACKAGE)}:{line}" for line in names_compared(ast.parse(path.read_text()), names)]
    assert not found, "ask wse_sim.mapping.mapping_info(name) instead: " + ", ".join(found)


def test_the_scan_finds_a_comparison():
    tree = ast.parse('if m == "auto" or m in ("cannon", "x"): pass\nif m != "y": pass')
    assert names_compared(tree, {"auto", "cannon"}) == [1, 1]
