"""Where a report came from: the tool's version and git commit, and the inputs that shaped it."""

from __future__ import annotations

import dataclasses
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import wse_sim

PACKAGE_DIR = Path(wse_sim.__file__).resolve().parent


def tool_version() -> str:
    """The installed distribution's version (the package's own when it is not installed)."""
    try:
        return metadata.version("wse-sim")
    except metadata.PackageNotFoundError:
        return wse_sim.__version__


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout the package runs from; None outside a checkout or without git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True, text=True,
                             timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit or None


def tool_info() -> dict:
    """The report's ``tool``: name, version and git commit (None when unknown)."""
    return {"name": "wse-sim", "version": tool_version(), "git_commit": git_commit()}


OMITTED_WHEN_UNSET = ("defects", "defect_seed", "defect_map")  # a healthy wafer's inputs stay as they were


def inputs_of(spec) -> dict:
    """Every field of the run's spec (a dataclass such as RunSpec), as the report's ``inputs`` (the defect options
    only when given)."""
    if not dataclasses.is_dataclass(spec):
        return {}
    return {k: v for k, v in dataclasses.asdict(spec).items() if not (k in OMITTED_WHEN_UNSET and v is None)}


def version_line() -> str:
    """``wse-sim --version``: the version, and the commit when run from a checkout."""
    commit = git_commit()
    return f"wse-sim {tool_version()}" + (f" (git {commit[:12]})" if commit else "")
