"""The planners' speed-ups change no result: the collector pause restores the collector's state, and the cached
grid hash is the dataclass's. (The engine's own event queue is held to SimPy's order by tests/test_engine_simpy.py,
against one real SimPy process per task, and by the golden runs.)"""

import gc

from wse_sim.gc_pause import gc_paused
from wse_sim.mapping import TileGrid


def test_gc_paused_restores_the_collectors_state():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner pause leaves the outer one in place
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # a caller that turned it off keeps it off
    finally:
        gc.enable()


def test_tile_grid_hash_is_the_fields_hash():
    g = TileGrid.make(100, 90, 8, 7)
    assert hash(g) == hash((g.rows, g.cols, g.row_edges, g.col_edges))
    assert hash(g) == hash(TileGrid.make(100, 90, 8, 7)) and g == TileGrid.make(100, 90, 8, 7)
    assert g != TileGrid.make(100, 90, 7, 8)


def test_layout_memos_are_per_instance_and_freed_with_it():
    """Planning memoises layout helpers on the layout itself: two layouts do not share answers, and a finished
    plan leaves no layout alive (``functools.cache`` on a method kept every one for the life of the process)."""
    from wse_sim.workloads import lower_gemm

    from wse_sim.arch import get_wafer
    from wse_sim.mapping import get_mapping
    from wse_sim.mapping.cannon import CannonLayout
    from wse_sim.mapping.layout import BlockLayout

    def alive() -> int:
        gc.collect()
        return sum(issubclass(type(o), BlockLayout) for o in gc.get_objects())  # type(): no __class__ lookups

    wafer, graph = get_wafer("wse2"), lower_gemm(48, 40, 56, "fp32")
    before = alive()
    for name in ("summa", "cannon", "meshgemm"):
        get_mapping(name).plan(graph, wafer, TileGrid.make(12, 12, 3, 3))
    assert alive() == before
    small, large = (CannonLayout(graph, wafer, TileGrid.make(n, n, 3, 3)) for n in (6, 12))
    assert (small.rows_per_pe(0), large.rows_per_pe(0)) == (8, 4)  # 16 rows per tile over 2 and 4 PE rows
    assert small.rows_per_pe(0) is small.rows_per_pe(0) and "rows_per_pe" in vars(small)


def test_task_without_actions_is_replace_without_actions():
    """The fast copy equals ``dataclasses.replace(t, actions=())`` on every task of a real numerics plan, and
    leaves the original as it was."""
    from dataclasses import replace

    from wse_sim.workloads import get_preset, lower_model

    from wse_sim.arch import get_wafer
    from wse_sim.mapping import get_mapping

    wafer = get_wafer("wse2")
    graph = lower_model(get_preset("cerebras-gpt-111m"), 1, 16, "fp32")
    plan = get_mapping("summa").plan(graph, wafer, TileGrid.make(400, 400, 2, 2))
    tasks = [t for op_plan in plan.ops for t in op_plan.tasks]
    with_actions = [t for t in tasks if t.actions]
    assert with_actions
    for t in tasks:
        fast = t.without_actions()
        assert fast == replace(t, actions=()) and hash(fast) == hash(replace(t, actions=()))
        assert fast.actions == () and (fast is t) == (not t.actions)
    assert all(t.actions for t in with_actions)
