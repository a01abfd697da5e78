"""The busy intervals a compiled run recorded (:mod:`wse_sim.sim.loop`), as the sequence of tuples
``SimResult.intervals`` holds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter

import numpy as np


class RecordedIntervals(Sequence):
    """The busy intervals a compiled run recorded (:mod:`wse_sim.sim.loop`): the same tuples, in the same order,
    as the Python loop's list, made as they are read from the loop's rows (resource, task, start, end, bytes,
    MACs). Half a million tuples of a 13B run cost about 0.25 s to make and keep; reading them once costs less.

    ``groups[r]``, ``keys[r]``: resource ``r``'s group and resource as recorded; ``op_of`` and ``tasks`` are the
    run's per-task lists (op index, task: its label)."""

    def __init__(self, groups: list, keys: list, rec_r: np.ndarray, rec_i: np.ndarray, start: np.ndarray,
                 end: np.ndarray, op_of: list, tasks: list, nbytes: np.ndarray, macs: np.ndarray):
        self.groups, self.keys, self.rec_r, self.rec_i, self.start, self.end = groups, keys, rec_r, rec_i, start, end
        self.op_of, self.tasks, self.nbytes, self.macs = op_of, tasks, nbytes, macs
        self._list: list | None = None

    def __len__(self) -> int:
        return len(self.rec_r)

    def __iter__(self):
        if self._list is not None:
            return iter(self._list)
        ri, rr = self.rec_i.tolist(), self.rec_r.tolist()
        return zip(map(self.groups.__getitem__, rr), map(self.keys.__getitem__, rr), self.start.tolist(),
                   self.end.tolist(), map(self.op_of.__getitem__, ri), map(attrgetter("label"),
                   map(self.tasks.__getitem__, ri)), self.nbytes.tolist(), self.macs.tolist(), strict=True)

    def __getitem__(self, k):
        if self._list is None:
            self._list = list(self)
        return self._list[k]

    def __eq__(self, other) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes | tuple):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RecordedIntervals({len(self)} intervals)"

    def columns(self) -> IntervalColumns:
        """The intervals as columns, without making a tuple each."""
        return IntervalColumns(list(zip(self.groups, self.keys, strict=True)), self.rec_r.astype(np.int64),
                               self.start.astype(np.int64), self.end.astype(np.int64),
                               np.asarray(self.op_of, dtype=np.int64)[self.rec_i])


@dataclass(frozen=True)
class IntervalColumns:
    """Busy intervals as columns: ``resources[r]`` is resource ``r``'s (group, resource key); per interval its
    resource index, start and end cycles and op index (the first five fields of each recorded tuple)."""

    resources: list
    resource: np.ndarray
    start_cycles: np.ndarray
    end_cycles: np.ndarray
    op: np.ndarray


def interval_columns(intervals: Sequence) -> IntervalColumns:
    """Columns of ``SimResult.intervals``: read from a compiled run's arrays, or made from the Python loop's list
    (resources numbered in order of first sight)."""
    if isinstance(intervals, RecordedIntervals):
        return intervals.columns()
    index: dict = {}
    res, start, end, op = [], [], [], []
    for group, key, s, e, k, _, _, _ in intervals:  # (no starred unpacking: a list per interval)
        res.append(index.setdefault((group, key), len(index)))
        start.append(s)
        end.append(e)
        op.append(k)
    return IntervalColumns(list(index), *(np.array(c, dtype=np.int64) for c in (res, start, end, op)))
