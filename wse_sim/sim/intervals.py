"""The busy intervals a compiled run recorded (:mod:`wse_sim.sim.loop`), as the sequence of tuples
``SimResult.intervals`` holds."""

from __future__ import annotations

from collections.abc import Sequence
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
