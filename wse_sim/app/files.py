"""Reading the files a user names (sweep and run configs, reports): a missing or malformed file is one
:class:`~wse_sim.errors.UserError` naming the file, never a traceback."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from ..errors import UserError


def read_toml(path: str | Path, what: str = "file") -> dict:
    """The TOML file's table; ``what`` names the file in errors (e.g. "sweep file")."""
    return _parse(Path(path), what, tomllib.loads, tomllib.TOMLDecodeError, "malformed TOML in {path}: {exc}")


def read_json(path: str | Path, what: str = "file") -> object:
    return _parse(Path(path), what, json.loads, json.JSONDecodeError, "{path} is not JSON: {exc}")


def _parse(path: Path, what: str, parse, error: type[Exception], message: str):
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{what} {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {what} {path}: {exc}") from None
    try:
        return parse(text)
    except error as exc:
        raise UserError(message.format(path=path, exc=exc)) from None
