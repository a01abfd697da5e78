"""Output paths checked before a simulation starts, and outputs written atomically: each file goes to a temporary
name in its own folder and all are moved into place together, so an interrupted run leaves the set or nothing."""

from __future__ import annotations

import gc
import json
import os
import pickle
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError


def _writable(folder: Path, what: str, path: Path) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: folder {folder} is not writable")


def check_folder(path: str | Path, what: str) -> None:
    """An output folder: an existing folder, or one that can be made under its nearest existing ancestor."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder")
    ancestor = next(p for p in (path, *path.parents) if p.exists())
    if not ancestor.is_dir():
        raise UserError(f"{what} {path}: {ancestor} is a file, not a folder")
    _writable(ancestor, what, path)


def check_file(path: str | Path, what: str, make_folder: bool = False) -> None:
    """An output file: not a folder, in an existing writable folder (or, with ``make_folder``, one that can be
    made)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file")
    if make_folder:
        check_folder(path.parent, what)
    elif not path.parent.is_dir():
        raise UserError(f"{what} {path}: folder {path.parent} does not exist")
    else:
        _writable(path.parent, what, path)


class Staged:
    """Temporary files beside their targets; :meth:`commit` moves them all into place, :meth:`discard` removes
    them (and a folder this run made). Use as a context manager: leaving without commit discards."""

    def __init__(self) -> None:
        self.moves: list[tuple[Path, Path]] = []
        self.made: list[Path] = []

    def folder(self, out: str | Path) -> Path:
        """A temporary folder inside ``out`` (made if missing) whose files :meth:`commit` moves into ``out``."""
        out = Path(out)
        self._make(out)
        tmp = Path(tempfile.mkdtemp(dir=out, prefix=".wse-sim-"))
        self.moves.append((tmp, out))
        return tmp

    def _make(self, folder: Path) -> None:
        if not folder.exists():
            self.made.append(next(p for p in (folder, *folder.parents) if p.parent.exists()))
            folder.mkdir(parents=True)

    def file(self, target: str | Path) -> Path:
        """A temporary file name in ``target``'s folder, with ``target``'s suffix."""
        target = Path(target)
        self._make(target.parent)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=target.suffix)
        os.close(fd)
        self.moves.append((Path(tmp), target))
        return Path(tmp)

    def commit(self) -> None:
        for tmp, target in self.moves:
            if tmp.is_dir():
                for f in sorted(tmp.iterdir()):
                    os.replace(f, target / f.name)
                tmp.rmdir()
            else:
                os.replace(tmp, target)
        self.moves, self.made = [], []

    def discard(self) -> None:
        for tmp, _ in self.moves:
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        for folder in self.made:
            shutil.rmtree(folder, ignore_errors=True)
        self.moves, self.made = [], []

    def __enter__(self) -> Staged:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


# Set by the ``wse-sim`` command (one run, then the process ends; see wse_sim.cli.main): the plots may be drawn
# in forked children while the parent simulates and checks. Never in a library call: a fork there could copy the
# caller's threads mid-operation.
draw_in_child = False
# Processes that draw at once: the figures are independent and the machine this was tuned on has two cores.
DRAWING_PROCESSES = 2


def _read_all(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as pipe:
        return pipe.read()


def _send_paths(write_fd: int, paths: list[Path]) -> None:
    with os.fdopen(write_fd, "w") as pipe:
        pipe.write(json.dumps([str(p) for p in paths]))


def _forked(work: Callable[[], list[Path]]) -> tuple[int, int]:
    """(pid, read end of a pipe): a forked child runs ``work`` and sends the paths it returns down the pipe, then
    ends without the parent's exit handlers or buffered output (exit code 1 if ``work`` raised)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        code = 1
        try:
            # SIGINT stops it (see _collect), even where the shell started the command with SIGINT ignored
            signal.signal(signal.SIGINT, signal.default_int_handler)
            # No collection at all: a full one would walk (and copy the pages of) the parent's objects, and the
            # child draws a few figures and ends, which frees all they leave (the collector took 3-4 % of drawing).
            gc.disable()
            _send_paths(write_fd, work())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def _collect(pid: int, read_fd: int) -> list[Path] | None:
    """The paths a :func:`_forked` child sent, or None if it failed. Interrupted (Ctrl-C, SIGTERM), it stops the
    child (SIGINT: a KeyboardInterrupt there) and still waits for it to end, so no drawing outlives the staging
    folder it writes into."""
    try:
        sent = _read_all(read_fd)
    except BaseException:
        os.kill(pid, signal.SIGINT)
        raise
    finally:
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or not sent:
        return None
    return [Path(p) for p in json.loads(sent)]


class Drawing:
    """Plots drawn beside the run: :func:`start_drawing` starts it, :meth:`send` hands over what to draw, :meth:`wait`
    returns the written paths, :meth:`close` (also on leaving a ``with`` block) stops a child not waited for.

    ``draw(job, part, parts)`` writes part ``part`` of ``parts`` of ``job``'s figures and returns their paths;
    ``prepare()`` (the imports ``draw`` needs) runs in the drawing child as soon as it is forked."""

    def __init__(self, draw: Callable[[Any, int, int], list[Path]], prepare: Callable[[], None],
                 parts: int) -> None:
        self.draw, self.job, self.child, self.handed_over = draw, None, None, False
        if draw_in_child and hasattr(os, "fork"):
            self.job_file = tempfile.TemporaryFile()  # the job's pickle, shared with the child (a pipe would block)
            go_read, self.go_write = os.pipe()  # the pickle's length, or end of file when there is nothing to draw
            self.child = _forked(lambda: self._child(prepare, go_read, parts))
            os.close(go_read)

    def _child(self, prepare: Callable[[], None], go_read: int, parts: int) -> list[Path]:
        os.close(self.go_write)
        prepare()
        sent = _read_all(go_read)
        if not sent:  # the parent stopped before sending a job
            return []
        self.job_file.seek(0)
        job = pickle.loads(self.job_file.read(int(sent)))
        helpers = [_forked(lambda k=k: self.draw(job, k, parts)) for k in range(1, parts)]
        try:
            paths = self.draw(job, 0, parts)
        except BaseException:
            for pid, _ in helpers:  # interrupted (or failed): the helpers stop too
                os.kill(pid, signal.SIGINT)
            raise
        finally:
            more = [_collect(*helper) for helper in helpers]
        if any(m is None for m in more):
            raise RuntimeError("a drawing process failed")  # the parent draws again and reports the error
        return paths + [p for m in more for p in m]

    def send(self, job) -> None:
        """Hand ``job`` to the drawing child (its figures are drawn from now on), or keep it for :meth:`wait`."""
        self.job = job
        if self.child is None:
            return
        try:
            data = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
            self.job_file.write(data)
            self.job_file.flush()
            os.write(self.go_write, str(len(data)).encode())
            self.handed_over = True
        except OSError:  # the child is gone (a broken pipe) or the temporary file is full: wait() draws here
            pass
        finally:
            self._stop_sending()

    def _stop_sending(self) -> None:
        if not self.job_file.closed:
            os.close(self.go_write)
            self.job_file.close()

    def wait(self) -> list[Path]:
        """The written paths. If the child failed, or without one, ``draw`` runs here, so a real error is raised
        where it is reported."""
        paths = None
        if self.child is not None:
            self._stop_sending()
            child, self.child = self.child, None  # collected once, even if interrupted
            drawn = _collect(*child)
            if self.handed_over:  # else the child ended without a job
                paths = drawn
        return paths if paths is not None else self.draw(self.job, 0, 1)

    def close(self) -> None:
        """Stop a child not waited for (an error or an interrupt cut the run short) and wait for it to end: it must
        not write into a staging folder being discarded."""
        if self.child is not None:
            self._stop_sending()
            child, self.child = self.child, None
            os.kill(child[0], signal.SIGINT)
            _collect(*child)

    def __enter__(self) -> Drawing:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NoDrawing:
    """A :class:`Drawing` that draws nothing (``wse-sim run --no-plots``): no child, no figures."""

    def send(self, job) -> None:
        pass

    def wait(self) -> list[Path]:
        return []

    def close(self) -> None:
        pass

    def __enter__(self) -> NoDrawing:
        return self

    def __exit__(self, *exc) -> None:
        pass


def start_drawing(draw: Callable[[Any, int, int], list[Path]], prepare: Callable[[], None]) -> Drawing:
    """A :class:`Drawing`. With :data:`draw_in_child` and ``os.fork``, a child is forked now, before the run: it
    runs ``prepare`` (matplotlib's import, about 0.5 s) while the parent simulates, then, once :meth:`Drawing.send`
    hands it a job, draws it in :data:`DRAWING_PROCESSES` processes (it forks the others), so matplotlib's
    single-threaded drawing runs beside the parent's reference checks and writes on the other core. Call it before
    the run starts threads: a child has none of the parent's numba, OpenMP or BLAS threads, and draws without them.
    Otherwise ``draw`` runs in this process when the paths are waited for."""
    return Drawing(draw, prepare, min(DRAWING_PROCESSES, os.cpu_count() or 1))
