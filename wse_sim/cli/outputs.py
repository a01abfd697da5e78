"""Output paths checked before a simulation starts, and outputs written atomically: each file goes to a temporary
name in its own folder and all are moved into place together, so an interrupted run leaves the set or nothing."""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

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
# in a forked child while the parent runs the reference checks. Never in a library call: a fork there could
# copy the caller's threads mid-operation.
draw_in_child = False


def start_drawing(draw: Callable[[], list[Path]]) -> Callable[[], list[Path]]:
    """Start ``draw`` (it writes files and returns their paths) and return the function that waits for its paths.

    With :data:`draw_in_child` and ``os.fork``, ``draw`` runs in a forked child, so matplotlib's single-threaded
    drawing (about 3 CPU s for the demo's four figures) overlaps the parent's next step on a second core. The
    child only draws: it does not use numba or OpenMP, whose threads it would not have. If the child fails,
    waiting draws again in this process, so a real error is raised here, where it is reported. Otherwise ``draw``
    runs when waited for."""
    if not (draw_in_child and hasattr(os, "fork")):
        return draw
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: draw, send the paths, end without the parent's exit handlers or buffered output
        os.close(read_fd)
        code = 1
        try:
            gc.freeze()  # no full collection through the parent's objects (each would copy their pages)
            with os.fdopen(write_fd, "w") as pipe:
                pipe.write(json.dumps([str(p) for p in draw()]))
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)

    def wait() -> list[Path]:
        with os.fdopen(read_fd) as pipe:
            sent = pipe.read()
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0 or not sent:
            return draw()
        return [Path(p) for p in json.loads(sent)]

    return wait
