"""The test environment itself: the repository root is off ``sys.path``, ``wse_sim.kernels`` is ours, the PyPI
``kernels`` package that transformers imports is not shadowed, and a broken reference is an error, not "n/a"."""

import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import wse_sim.kernels
from wse_sim.workloads import ReferenceImportError, import_transformers, random_weights, transformers_logits

from wse_sim.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_repository_root_is_not_on_sys_path():
    assert ROOT not in {Path(p or ".").resolve() for p in sys.path}


def test_project_kernels_and_pypi_kernels_resolve_apart():
    import transformers.integrations.hub_kernels  # noqa: F401  (imports the PyPI `kernels` when installed)

    ours = ROOT / "kernels" / "__init__.py"
    assert Path(wse_sim.kernels.__file__).resolve() == ours
    spec = importlib.util.find_spec("kernels")
    if spec is not None:  # transformers 5 installs it; older versions may not
        assert Path(spec.origin).resolve() != ours
        assert "site-packages" in Path(spec.origin).parts


def test_root_on_sys_path_is_named_not_silent(tmp_path):
    """Python started in the repository root (``python -c``, ``python -m``, a notebook) puts it first on
    ``sys.path``: the reference must say so, and the CLI must fail with that reason instead of printing n/a."""
    code = "from wse_sim.workloads import import_transformers; import_transformers()"
    probe = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert probe.returncode != 0
    assert "ReferenceImportError" in probe.stderr and "shadows it" in probe.stderr and "-P" in probe.stderr


def test_missing_transformers_is_an_import_error(tiny_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"transformers \(not installed\)"):
        import_transformers()


class _BrokenModule(types.ModuleType):
    def __getattr__(self, name):
        raise RuntimeError(f"Failed to import transformers.{name} because of the following error: boom")


def test_installed_but_broken_transformers_names_the_exception(tiny_config, monkeypatch):
    broken = _BrokenModule("transformers")
    broken.__spec__ = importlib.util.find_spec("transformers")
    monkeypatch.setitem(sys.modules, "transformers", broken)
    with pytest.raises(ReferenceImportError, match=r"installed but failed to import: RuntimeError: .*boom"):
        transformers_logits(random_weights(tiny_config), np.zeros((1, 3), np.int64))


def test_cli_reports_broken_reference_and_exits_2(tmp_path, monkeypatch, capsys):
    broken = _BrokenModule("transformers")
    broken.__spec__ = importlib.util.find_spec("transformers")
    monkeypatch.setitem(sys.modules, "transformers", broken)
    config = tmp_path / "config.json"
    config.write_text('{"model_type": "gpt2", "n_embd": 48, "n_layer": 1, "n_head": 3, "vocab_size": 101, '
                      '"n_positions": 64}')
    argv = ["run", "--model", str(config), "--wafer", "tiny", "--seq", "8", "--tiles", "2x2", "--numerics",
            "--out", str(tmp_path / "out"), "--quiet"]
    assert main([*argv, "--check-transformers"]) == 2
    assert "installed but failed to import: RuntimeError" in capsys.readouterr().err
    assert main(argv) == 0  # by default only the float64 reference runs: transformers is not imported
