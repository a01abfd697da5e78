"""The engine's and planners' speed-ups change no result: the lean resource grants in SimPy's exact order, the
collector pause restores the collector's state, and the cached grid hash is the dataclass's."""

import gc
import random

import pytest
import simpy

from wse_sim.gc_pause import gc_paused
from wse_sim.mapping import TileGrid
from wse_sim.sim.engine import _Resource


def _script(rng: random.Random, n_res: int) -> list[tuple]:
    """A process's steps: wait, hold one resource, or hold several (requested together, as a transfer's links)."""
    steps = []
    for _ in range(rng.randint(1, 6)):
        kind = rng.choice(("wait", "hold", "hold", "many"))
        if kind == "wait":
            steps.append(("wait", rng.choice((0, 0, 1, 2))))
        elif kind == "hold":
            steps.append(("hold", (rng.randrange(n_res),), rng.choice((0, 1, 1, 2, 3))))
        else:
            steps.append(("hold", tuple(sorted(rng.sample(range(n_res), 2))), rng.choice((0, 1, 2))))
    return steps


def _trace(seed: int, lean: bool) -> list[tuple]:
    """When each process gets and frees what, with SimPy's resource or the engine's; processes also start others
    when they end (SimPy starts a process with an urgent event, which must interleave the same way)."""
    rng = random.Random(seed)
    n_res = 3
    scripts = [_script(rng, n_res) for _ in range(40)]
    children = {p: rng.randrange(40, 60) for p in rng.sample(range(40), 10)}
    scripts += [_script(rng, n_res) for _ in range(20)]
    env = simpy.Environment()
    res = [_Resource(env) if lean else simpy.Resource(env, 1) for _ in range(n_res)]
    log: list[tuple] = []

    def proc(p: int):
        for s, step in enumerate(scripts[p]):
            if step[0] == "wait":
                yield env.timeout(step[1])
                continue
            _, which, hold = step
            reqs = [res[r].request() for r in which]
            for req in reqs:
                yield req
            log.append((env.now, p, s, "got"))
            yield env.timeout(hold)
            for r, req in zip(which, reqs, strict=True):
                res[r].release() if lean else res[r].release(req)
            log.append((env.now, p, s, "freed"))
        if p in children:
            env.process(proc(children[p]))

    for p in range(40):
        env.process(proc(p))
    env.run()
    return log


@pytest.mark.parametrize("seed", range(25))
def test_lean_resource_grants_in_simpys_order(seed):
    assert _trace(seed, lean=True) == _trace(seed, lean=False)


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
