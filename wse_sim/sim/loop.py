"""The engine's event loop compiled with numba, for runs without numerics (:class:`~wse_sim.sim.engine._Run`).

The same loop as :meth:`_Run.run <wse_sim.sim.engine._Run.run>` (read its docstring and the class's for the
events, their SimPy order and what each does), on flat int64 arrays instead of Python lists and objects, so a
task costs tens of nanoseconds instead of microseconds. Every decision is the Python loop's, in the same order:

- the heap of later events holds (time, key) pairs in two parallel arrays, ``key`` = creation order, then the
  event (Python ints are unbounded; here each part gets its own bits, checked by :func:`fits`);
- the events made for the current time are a FIFO array (reset to empty whenever it drains);
- each resource's waiting tasks are a linked FIFO through the task's entry in the resource CSR (a task waits for
  each of its resources at most once);
- a finishing barrier finishes at once, depth first, as the recursive :meth:`_Run.finish` does: an explicit
  stack of (task, next successor) replaces the recursion;
- tile busy and MAC tallies are float64 sums added in the same order as the Python loop's (so bit-identical);
- the busy intervals (``record=True``) are kept as (resource, task, end time) rows; the engine turns them into
  the same tuples afterwards.

Without numerics a task does nothing at its end but tally and launch successors, which is all this loop does.
The state lives in arrays the caller owns, so the loop can stop after a block's last task (``chunked``: the
progress bar ticks) and resume where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np
from numba import njit

from ..numba_setup import load_registries
from .intervals import RecordedIntervals

load_registries()  # before the first compiled function loads: see wse_sim.numba_setup

# Event codes (as in engine.py) and the task kind codes (the engine's ``_done`` order; 5 is a barrier).
GRANT, HELD, RELEASE, ARRIVED, REQUEST = 0, 1, 2, 3, 4
COMPUTE, TRANSFER, STREAM, STREAM_OUT, INTERWAFER, BARRIER = 0, 1, 2, 3, 4, 5
CODE_BITS = 3

# Scalar state, one slot each of the int64 array ``st``.
(S_NOW, S_ORDER, S_NQ_HEAD, S_NQ_TAIL, S_HEAP, S_STARTS, S_FREE_SLOTS, S_SLOT_HEAD, S_SLOT_TAIL, S_REC,
 S_LINKS, S_TICKS, S_STARTED, S_ARG_BITS, S_SIZE) = range(15)


def fits(n_tasks: int, n_resources: int) -> tuple[bool, int]:
    """Whether a heap key (creation order, then event) fits 63 bits, and the event's bits: at most two heap
    events per task (its hold's end, its tail's arrival), so the order stays below ``2 * n_tasks``."""
    arg_bits = max(n_tasks, n_resources, 1).bit_length() + CODE_BITS
    return arg_bits + (2 * n_tasks + 1).bit_length() <= 62, arg_bits


@njit(cache=True)
def successors(dep_ptr, dep_idx, n):
    """The successor CSR of a dependency CSR: task i's successors in increasing order of i, a task once per
    time it lists the dependency (the order the Python ``_load`` appends them)."""
    cnt = np.zeros(n + 1, np.int64)
    for p in dep_idx:
        cnt[p + 1] += 1
    for i in range(n):
        cnt[i + 1] += cnt[i]
    fill = cnt[:-1].copy()
    out = np.empty(len(dep_idx), np.int64)
    for i in range(n):
        for q in range(dep_ptr[i], dep_ptr[i + 1]):
            p = dep_idx[q]
            out[fill[p]] = i
            fill[p] += 1
    return cnt, out


@njit(cache=True)
def resolve_crit(crit, dep_ptr, dep_idx, end_t):
    """``_Run._crit_of`` for every task still at -2: the dependency that ended last (the last of equals)."""
    for i in range(len(crit)):
        if crit[i] == -2:
            best, best_end = -1, -1
            for q in range(dep_ptr[i], dep_ptr[i + 1]):
                p = dep_idx[q]
                if end_t[p] >= best_end:
                    best, best_end = p, end_t[p]
            crit[i] = best


@njit(cache=True, inline="always")
def _heap_push(ht, hk, size, t, k):
    j = size
    while j > 0:
        parent = (j - 1) >> 1
        pt, pk = ht[parent], hk[parent]
        if pt < t or (pt == t and pk < k):
            break
        ht[j], hk[j] = pt, pk
        j = parent
    ht[j], hk[j] = t, k
    return size + 1


@njit(cache=True, inline="always")
def _heap_pop(ht, hk, size):
    """Remove the root (read it before); returns the new size."""
    size -= 1
    t, k = ht[size], hk[size]
    j = 0
    while True:
        c = 2 * j + 1
        if c >= size:
            break
        if c + 1 < size and (ht[c + 1] < ht[c] or (ht[c + 1] == ht[c] and hk[c + 1] < hk[c])):
            c += 1
        if t < ht[c] or (t == ht[c] and k < hk[c]):
            break
        ht[j], hk[j] = ht[c], hk[c]
        j = c
    ht[j], hk[j] = t, k
    return size


@njit(cache=True)
def _finish(i, st, code, succ_ptr, succ_idx, remaining, frees, tick, ready_t, end_t, crit, starts, slotq, nq,
            stack_t, stack_p):
    """``_Run.finish``: task i ended; a barrier that becomes ready finishes at once (depth first)."""
    now = st[S_NOW]
    depth = 0
    s = i
    while True:
        # enter s: its end, the weight buffer it frees, a progress tick
        end_t[s] = now
        if frees[s]:
            if st[S_SLOT_HEAD] < st[S_SLOT_TAIL]:
                waiter = slotq[st[S_SLOT_HEAD]]
                st[S_SLOT_HEAD] += 1
                crit[waiter] = s
                ready_t[waiter] = now
                nq[st[S_NQ_TAIL]] = (waiter << CODE_BITS) | REQUEST
                st[S_NQ_TAIL] += 1
            else:
                st[S_FREE_SLOTS] += 1
        if tick[s]:
            st[S_TICKS] += 1
        stack_t[depth] = s
        stack_p[depth] = succ_ptr[s]
        depth += 1
        s = -1
        while depth > 0:
            top = stack_t[depth - 1]
            p = stack_p[depth - 1]
            if p == succ_ptr[top + 1]:
                depth -= 1
                continue
            stack_p[depth - 1] = p + 1
            c = succ_idx[p]
            left = remaining[c] - 1
            remaining[c] = left
            if left == 0:
                ready_t[c] = now
                if code[c] == BARRIER:
                    s = c
                    break
                starts[st[S_STARTS]] = c
                st[S_STARTS] += 1
        if s < 0:
            return


@njit(cache=True)
def _request(i, st, key_ptr, key_res, hold, busy, w_head, w_tail, w_next, key_owner, pending, nq, ht, hk):
    """``_Run._request``: ask for every resource of task i; grants made at once or handed to older waiters go
    to the current-time FIFO, task i's own at the place of its last at-once grant."""
    at = -1
    waits = 0
    for p in range(key_ptr[i], key_ptr[i + 1]):
        r = key_res[p]
        if not busy[r] and w_head[r] < 0:
            busy[r] = True
            at = st[S_NQ_TAIL]
            continue
        w_next[p] = -1  # append task i (its entry p) to r's waiters
        if w_head[r] < 0:
            w_head[r] = p
        else:
            w_next[w_tail[r]] = p
        w_tail[r] = p
        waits += 1
        if not busy[r]:  # freed, its release not yet processed: the oldest waiter gets it
            busy[r] = True
            q = w_head[r]
            w_head[r] = w_next[q]
            nq[st[S_NQ_TAIL]] = (key_owner[q] << CODE_BITS) | GRANT
            st[S_NQ_TAIL] += 1
    if at >= 0:
        waits += 1
        tail = st[S_NQ_TAIL]
        for q in range(tail, at, -1):
            nq[q] = nq[q - 1]
        nq[at] = (i << CODE_BITS) | GRANT
        st[S_NQ_TAIL] = tail + 1
    pending[i] = waits
    if waits == 0:  # holds nothing: on at once
        _later(st, hold[i], HELD, i, nq, ht, hk)


@njit(cache=True, inline="always")
def _later(st, cycles, ev_code, arg, nq, ht, hk):
    """``_Run._event``: event ``ev_code`` on ``arg`` ``cycles`` from now."""
    ev = (arg << CODE_BITS) | ev_code
    if cycles:
        key = (st[S_ORDER] << st[S_ARG_BITS]) | ev
        st[S_ORDER] += 1
        st[S_HEAP] = _heap_push(ht, hk, st[S_HEAP], st[S_NOW] + cycles, key)
    else:
        nq[st[S_NQ_TAIL]] = ev
        st[S_NQ_TAIL] += 1


@njit(cache=True)
def run_loop(st, chunked, record, code, hold, latency, macs_f, key_ptr, key_res, key_owner, succ_ptr, succ_idx,
             remaining, frees, tick, ready_t, end_t, crit, pending, busy, w_head, w_tail, w_next, holder_t,
             holder_i, ht, hk, nq, starts, slotq, stack_t, stack_p, tile_busy, tile_macs, res_busy, res_used,
             link_order, rec_r, rec_i, rec_t):
    """Run the events until none is left (returns True) or, with ``chunked``, until a block's last task ended
    (returns False; ``st[S_TICKS]`` counts the ticks: call again to go on).

    Per task: ``code`` .. ``macs_f`` (:class:`Arrays`), its resources ``key_res[key_ptr[i]:key_ptr[i + 1]]``
    (``key_owner``: the task of each entry), successors likewise, dependencies not yet ended, whether it frees a
    weight buffer or ticks the bar, its times and critical-path parent (-2: the dependency that ended last), the
    grants it still waits for. Per resource: held, its waiters (head, tail; ``w_next`` per key entry), its last
    holder (release time, task). Work arrays: the heap (``ht``, ``hk``), the current-time FIFO ``nq``, the
    tasks started by the last step, the streams waiting for a buffer, the finish stack. Tallies: tile busy and
    MACs (float64), other resources' busy cycles and whether used, the order resources were first used, and
    the recorded rows (resource, task, end time)."""
    arg_mask = (np.int64(1) << st[S_ARG_BITS]) - 1
    if not st[S_STARTED]:  # launch the tasks that wait for nothing (the list is taken first)
        st[S_STARTED] = 1
        first = np.nonzero(remaining == 0)[0]
        for i in first:
            ready_t[i] = 0
            if code[i] == BARRIER:
                _finish(i, st, code, succ_ptr, succ_idx, remaining, frees, tick, ready_t, end_t, crit, starts,
                        slotq, nq, stack_t, stack_p)
            else:
                starts[st[S_STARTS]] = i
                st[S_STARTS] += 1
    while True:
        if chunked and st[S_TICKS]:
            return False
        n_starts = st[S_STARTS]
        if n_starts:  # the tasks launched by the last step start, in order
            for j in range(n_starts):
                s = starts[j]
                if code[s] == STREAM:
                    if st[S_FREE_SLOTS] > 0:
                        st[S_FREE_SLOTS] -= 1
                        _request(s, st, key_ptr, key_res, hold, busy, w_head, w_tail, w_next, key_owner, pending,
                                 nq, ht, hk)
                    else:
                        slotq[st[S_SLOT_TAIL]] = s
                        st[S_SLOT_TAIL] += 1
                else:
                    _request(s, st, key_ptr, key_res, hold, busy, w_head, w_tail, w_next, key_owner, pending, nq,
                             ht, hk)
            st[S_STARTS] = 0
        now = st[S_NOW]
        if st[S_HEAP] and ht[0] <= now:
            ev = hk[0] & arg_mask
            st[S_HEAP] = _heap_pop(ht, hk, st[S_HEAP])
        elif st[S_NQ_HEAD] < st[S_NQ_TAIL]:
            ev = nq[st[S_NQ_HEAD]]
            st[S_NQ_HEAD] += 1
            if st[S_NQ_HEAD] == st[S_NQ_TAIL]:
                st[S_NQ_HEAD] = 0
                st[S_NQ_TAIL] = 0
        elif st[S_HEAP]:
            now = st[S_NOW] = ht[0]
            ev = hk[0] & arg_mask
            st[S_HEAP] = _heap_pop(ht, hk, st[S_HEAP])
        else:
            return True
        ev_code = ev & 7
        i = ev >> CODE_BITS
        if ev_code == GRANT:  # one grant of task i; after the last it holds its resources
            left = pending[i] - 1
            pending[i] = left
            if left == 0:
                if now > ready_t[i]:  # it waited: on the critical path of whoever released last
                    bt, bi = np.int64(-1), np.int64(-1)
                    for p in range(key_ptr[i], key_ptr[i + 1]):
                        r = key_res[p]
                        h = holder_i[r]
                        if h >= 0 and (holder_t[r] > bt or (holder_t[r] == bt and h > bi)):
                            bt, bi = holder_t[r], h
                    if bi >= 0:
                        crit[i] = bi
                        ready_t[i] = now
                _later(st, hold[i], HELD, i, nq, ht, hk)
        elif ev_code == HELD:  # task i held its resources for its cost: release them, then its kind's end
            k0, k1 = key_ptr[i], key_ptr[i + 1]
            for p in range(k0, k1):
                r = key_res[p]
                holder_t[r] = now
                holder_i[r] = i
            for p in range(k0, k1):
                r = key_res[p]
                busy[r] = False
                if w_head[r] >= 0:
                    nq[st[S_NQ_TAIL]] = (r << CODE_BITS) | RELEASE
                    st[S_NQ_TAIL] += 1
            c = code[i]
            cyc = hold[i]
            if c == COMPUTE:
                r = key_res[k0]
                tile_busy[r] += cyc
                tile_macs[r] += macs_f[i]
            else:
                for p in range(k0, k1):
                    r = key_res[p]
                    if not res_used[r]:
                        res_used[r] = True
                        link_order[st[S_LINKS]] = r
                        st[S_LINKS] += 1
                        res_busy[r] = cyc
                    else:
                        res_busy[r] += cyc
            if record and cyc:
                for p in range(k0, k1):
                    n_rec = st[S_REC]
                    rec_r[n_rec] = key_res[p]
                    rec_i[n_rec] = i
                    rec_t[n_rec] = now
                    st[S_REC] = n_rec + 1
            if c == TRANSFER or c == INTERWAFER:  # the tail arrives after the latency; then it finishes
                _later(st, latency[i], ARRIVED, i, nq, ht, hk)
            else:
                _finish(i, st, code, succ_ptr, succ_idx, remaining, frees, tick, ready_t, end_t, crit, starts,
                        slotq, nq, stack_t, stack_p)
        elif ev_code == RELEASE:  # i is a resource
            if not busy[i] and w_head[i] >= 0:
                busy[i] = True
                q = w_head[i]
                w_head[i] = w_next[q]
                nq[st[S_NQ_TAIL]] = (key_owner[q] << CODE_BITS) | GRANT
                st[S_NQ_TAIL] += 1
        elif ev_code == ARRIVED:
            _finish(i, st, code, succ_ptr, succ_idx, remaining, frees, tick, ready_t, end_t, crit, starts, slotq,
                    nq, stack_t, stack_p)
        else:
            _request(i, st, key_ptr, key_res, hold, busy, w_head, w_tail, w_next, key_owner, pending, nq, ht, hk)


@njit(cache=True)
def assemble(op_desc, has_after, after_ptr, after_idx, d_t0, d_nt, l_code, l_dstart, l_dcnt, l_dflat, l_estart,
             l_ecnt, l_eflat, stream, compute, n):
    """The dependency CSR of the whole plan, as ``_Run._load`` builds its lists: per task its op's own
    dependencies (``base + x``), its ``ext_deps`` (``op_base[a] + x``), then the previous weight stream (a
    stream) or the ends of the ops it runs after (a compute, or a task without dependencies of its own).
    ``op_desc[k]`` is op k's distinct task tuple, whose tasks are ``d_t0[d]`` on in the ``l_*`` arrays (``l_eflat``
    holds (op, task) pairs). Also each task's place in the ``l_*`` arrays and each op's last task."""
    nops = len(op_desc)
    op_base, op_end = np.empty(nops, np.int64), np.empty(nops, np.int64)
    local = np.empty(n, np.int64)
    dep_ptr = np.zeros(n + 1, np.int64)
    dep_idx = np.empty(0, np.int64)
    for fill in range(2):  # count, then fill in the same order
        i, last_stream = 0, -1
        for k in range(nops):
            d = op_desc[k]
            base = i
            op_base[k] = base
            npe = after_ptr[k + 1] - after_ptr[k] if has_after[k] else (1 if k > 0 else 0)
            for j in range(d_nt[d]):
                q = d_t0[d] + j
                local[i] = q
                own, ext = l_dcnt[q], l_ecnt[q]
                prev_stream, ends = -1, False
                if l_code[q] == stream:
                    prev_stream = last_stream
                    last_stream = i
                elif npe > 0 and (own == 0 or l_code[q] == compute):
                    ends = True
                if not fill:
                    dep_ptr[i + 1] = own + ext + (1 if prev_stream >= 0 else 0) + (npe if ends else 0)
                else:
                    at = dep_ptr[i]
                    for m in range(own):
                        dep_idx[at] = base + l_dflat[l_dstart[q] + m]
                        at += 1
                    for m in range(ext):
                        e = l_estart[q] + 2 * m
                        dep_idx[at] = op_base[l_eflat[e]] + l_eflat[e + 1]
                        at += 1
                    if prev_stream >= 0:
                        dep_idx[at] = prev_stream
                        at += 1
                    if ends:
                        if has_after[k]:
                            for m in range(after_ptr[k], after_ptr[k + 1]):
                                dep_idx[at] = op_end[after_idx[m]]
                                at += 1
                        else:
                            dep_idx[at] = op_end[k - 1]
                            at += 1
                i += 1
            op_end[k] = i - 1
        if not fill:
            for i in range(n):
                dep_ptr[i + 1] += dep_ptr[i]
            dep_idx = np.empty(dep_ptr[n], np.int64)
    return dep_ptr, dep_idx, local, op_end


@dataclass(frozen=True)
class Arrays:
    """A plan's tasks as the compiled loop reads them (global task index; CSR: ``ptr[i]:ptr[i + 1]``)."""

    code: np.ndarray  # kind code (engine ``_done`` order; barrier after)
    hold: np.ndarray  # cycles a task holds its resources
    latency: np.ndarray  # cycles after that until it ends (transfers, inter-wafer)
    macs: np.ndarray  # a compute's FMACs over its tile, float64 (the tile tallies' addend)
    special: np.ndarray  # a barrier that frees a weight buffer
    dep_ptr: np.ndarray
    dep_idx: np.ndarray
    key_ptr: np.ndarray  # resources, as resource indices
    key_res: np.ndarray
    remaining: np.ndarray  # dependencies not yet ended (the loop counts them down)
    macs_int: np.ndarray  # the MACs as recorded (ints)
    nbytes: np.ndarray  # bytes as recorded: a transfer's, stream's or inter-wafer task's (a compute's: 0)


def _ints(values: list) -> np.ndarray | None:
    """``values`` as int64, or None if some are not ints or beyond int64."""
    try:
        a = np.array(values) if values else np.zeros(0, np.int64)
    except OverflowError:
        return None
    return a if a.dtype == np.int64 else None


class Assembler:
    """Collects a plan's ops as ``_Run._load`` reads them: each distinct task tuple's per-task values once (as
    flat lists), and per op which tuple and what it runs after; :meth:`finish` makes the :class:`Arrays`."""

    def __init__(self):
        self.index: dict = {}  # id(task tuple) -> its number
        self.parts: list = []  # per distinct tuple: codes, hold, latency, special, macs, deps, ext deps, keys, bytes
        self.op_desc: list[int] = []
        self.has_after: list[bool] = []
        self.after: list[int] = []
        self.after_ptr: list[int] = [0]

    def add(self, ts: tuple, desc: tuple, after: tuple | None) -> None:
        """Op ``ts`` (``_describe``'s ``desc`` of it), run after ``after`` (None: the previous op)."""
        d = self.index.get(id(ts))
        if d is None:
            d = self.index[id(ts)] = len(self.parts)
            codes, hold, latency, keys, special, macs, _ = desc
            self.parts.append((codes, hold, latency, special, macs, [len(t.deps) for t in ts],
                               [x for t in ts for x in t.deps], [len(t.ext_deps) for t in ts],
                               [v for t in ts for pair in t.ext_deps for v in pair], list(map(len, keys)),
                               list(chain.from_iterable(keys)),
                               [0 if c == COMPUTE else t.nbytes for t, c in zip(ts, codes, strict=True)]))
        self.op_desc.append(d)
        self.has_after.append(after is not None)
        self.after += after or ()
        self.after_ptr.append(len(self.after))

    def finish(self, n: int, nres: int, stream: int, compute: int) -> Arrays | None:
        """The plan's :class:`Arrays`, or None when its values do not fit int64 or its event keys 62 bits."""
        def col(f: int) -> np.ndarray:  # field f of every part, ints known to fit (kinds, counts, indices, flags)
            return np.fromiter(chain.from_iterable(p[f] for p in self.parts), np.int64)

        hold, latency, macs, nbytes = (_ints(list(chain.from_iterable(p[f] for p in self.parts)))
                                       for f in (1, 2, 4, 11))  # costs and sizes: checked
        if not fits(n, nres)[0] or any(a is None for a in (hold, latency, macs, nbytes)):
            return None
        sizes = np.array([len(p[0]) for p in self.parts], np.int64)
        d_t0 = np.zeros(len(sizes), np.int64)
        np.cumsum(sizes[:-1], out=d_t0[1:])
        code, dcnt, ecnt, kcnt = (col(f) for f in (0, 5, 7, 9))
        dstart, estart, kstart = (np.cumsum(c) - c for c in (dcnt, 2 * ecnt, kcnt))
        dep_ptr, dep_idx, local, _ = assemble(
            np.array(self.op_desc, np.int64), np.array(self.has_after, np.bool_), np.array(self.after_ptr, np.int64),
            np.array(self.after, np.int64), d_t0, sizes, code, dstart, dcnt, col(6), estart, ecnt, col(8), stream,
            compute, n)
        key_ptr = np.zeros(n + 1, np.int64)
        np.cumsum(kcnt[local], out=key_ptr[1:])
        kflat = col(10)
        key_res = kflat[np.repeat(kstart[local] - key_ptr[:-1], np.diff(key_ptr)) + np.arange(key_ptr[-1])]
        return Arrays(code[local], hold[local], latency[local], macs[local].astype(np.float64),
                      col(3).astype(np.bool_)[local], dep_ptr, dep_idx, key_ptr, key_res, np.diff(dep_ptr),
                      macs[local], nbytes[local])


def run_compiled(run) -> None:
    """Run ``run`` (an ``engine._Run`` without numerics, loaded: ``run.arrays``) with :func:`run_loop` and leave
    in it what its Python loop leaves (times, critical-path parents, tallies, intervals), so ``run.result()`` is
    the same."""
    a = run.arrays
    n, nres = len(a.code), len(run.res_key)
    arg_bits = fits(n, nres)[1]
    succ_ptr, succ_idx = successors(a.dep_ptr, a.dep_idx, n)
    key_owner = np.repeat(np.arange(n, dtype=np.int64), np.diff(a.key_ptr))
    remaining = a.remaining
    tick = np.zeros(n, np.bool_)
    chunked = run.bar is not None
    if chunked:
        tick[list(run.layer_ends)] = True
    nkeys = len(a.key_res)
    st = np.zeros(S_SIZE, np.int64)
    st[S_FREE_SLOTS], st[S_ARG_BITS] = run.free_slots, arg_bits
    ready_t, end_t, crit = np.zeros(n, np.int64), np.zeros(n, np.int64), np.full(n, -2, np.int64)
    holder_t, holder_i = np.zeros(nres, np.int64), np.full(nres, -1, np.int64)
    res_busy, res_used, link_order = np.zeros(nres, np.int64), np.zeros(nres, np.bool_), np.zeros(nres, np.int64)
    tile_busy, tile_macs = np.zeros(nres), np.zeros(nres)
    record = run.intervals is not None
    rec = [np.empty(nkeys if record else 0, np.int64) for _ in range(3)]
    args = (a.code, a.hold, a.latency, a.macs, a.key_ptr, a.key_res, key_owner, succ_ptr, succ_idx,
            remaining, a.special, tick, ready_t, end_t, crit, np.zeros(n, np.int64),
            np.zeros(nres, np.bool_), np.full(nres, -1, np.int64), np.full(nres, -1, np.int64),
            np.full(nkeys, -1, np.int64), holder_t, holder_i, np.empty(n + 1, np.int64), np.empty(n + 1, np.int64),
            np.empty(2 * nkeys + 3 * n + 1, np.int64), np.empty(n, np.int64), np.empty(n, np.int64),
            np.empty(n + 1, np.int64), np.empty(n + 1, np.int64), tile_busy, tile_macs, res_busy, res_used,
            link_order, *rec)
    while not run_loop(st, chunked, record, *args):
        run.bar.update(int(st[S_TICKS]))
        st[S_TICKS] = 0
    if chunked and st[S_TICKS]:
        run.bar.update(int(st[S_TICKS]))
    resolve_crit(crit, a.dep_ptr, a.dep_idx, end_t)
    run.now = int(st[S_NOW])
    run.ready_t, run.end_t, run.crit = ready_t, end_t, crit  # the critical-path walks read a few: int() each
    groups = [_group(run, r) for r in range(nres)]
    _tallies(run, groups, tile_busy, tile_macs, res_busy, res_used, link_order[:st[S_LINKS]])
    if record:
        run.intervals = _intervals(run, groups, a, *(r[:st[S_REC]] for r in rec))


def _group(run, r: int) -> tuple:
    """Resource ``r``'s (group, resource) as the engine records them."""
    key = run.res_key[r]
    if run.pes[r] is not None:
        return "tile", key
    if key == "memoryx" or key == "memoryx_out":
        return "memoryx", key
    if isinstance(key, tuple) and key[0] == "interwafer":
        return "interwafer", key[1]
    return "link", key


def _tallies(run, groups: list, tile_busy, tile_macs, res_busy, res_used, first_used) -> None:
    """The busy tallies as the Python loop's ``_*_done`` leave them in ``run`` (``groups``: :func:`_group` of each
    resource)."""
    run.tile_busy, run.tile_macs = tile_busy.tolist(), tile_macs.tolist()
    busy = res_busy.tolist()
    run.link_order = [r for r in first_used.tolist() if groups[r][0] == "link"]
    run.link_busy = [busy[r] if used and g == "link" else None for r, (used, (g, _)) in
                     enumerate(zip(res_used.tolist(), groups, strict=True))]
    run.memoryx_busy = sum(busy[r] for r, (g, k) in enumerate(groups) if k == "memoryx" and g == "memoryx")
    run.memoryx_out_busy = sum(busy[r] for r, (g, k) in enumerate(groups) if k == "memoryx_out")
    run.wafer_link_busy = {k: busy[r] for r, (g, k) in enumerate(groups) if g == "interwafer" and res_used[r]}


def _intervals(run, groups: list, a: Arrays, rec_r, rec_i, rec_t) -> RecordedIntervals:
    """The recorded (group, resource, start, end, op index, label, bytes, MACs) tuples, in recording order."""
    return RecordedIntervals([g for g, _ in groups], [k for _, k in groups], rec_r, rec_i, rec_t - a.hold[rec_i], rec_t,
                             run.op_of, run.tasks, a.nbytes[rec_i], a.macs_int[rec_i])
