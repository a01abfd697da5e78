"""Reading the files a user names (sweep and run configs, reports): a missing or malformed file is one
:class:`~wse_sim.errors.UserError` naming the file, never a traceback."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from ..errors import UserError


def read_toml(path: str | Path, what: str = "file") -> dict:
    """The TOML file's table; ``what`` names the file in errors (e.g. "sweep file")."""
    path = Path(path)
    try:
        return tomllib.loads(_text(path, what))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"malformed TOML in {path}: {exc}") from None


def read_json(path: str | Path, what: str = "file") -> object:
    path = Path(path)
    try:
        return json.loads(_text(path, what))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not JSON: {exc}") from None


def _text(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise UserError(f"{what} {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {what} {path}: {exc}") from None
