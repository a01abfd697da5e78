# Two commands on a fresh clone: `make demo` and `make test`. Everything else is set up here.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out/demo

LOCK := requirements.lock
PIP_TOOLS := pip-tools==7.7.0

.PHONY: demo test test-latest lock lint bench gallery clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Every package from the lock (pinned, torch the CPU build), then the project itself without resolving anything.
$(VENV)/.installed-test: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/pip install -q -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip check
	touch $@

demo: $(VENV)/.installed-test
	$(BIN)/wse-sim run --model cerebras-gpt-111m --wafer wse2 --seq 512 --batch 1 --precision fp16 --out $(OUT)

# -P: the repository root stays off sys.path, so the top-level kernels/ cannot shadow the PyPI package `kernels`
# that transformers imports (wse_sim.kernels is installed from kernels/ by the editable install).
test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/python -P -m pytest

# Refresh the lock from pyproject.toml and lock.in, taking the newest releases (then run `make test`).
lock:
	$(PY) -m venv .venv-lock
	.venv-lock/bin/pip install -q $(PIP_TOOLS)
	.venv-lock/bin/pip-compile -q --upgrade --strip-extras --extra test --no-emit-index-url --no-emit-find-links \
		--output-file $(LOCK) pyproject.toml lock.in

# The test suite (without slow tests) against the newest releases instead of the lock, in its own .venv-latest:
# what a fresh clone would meet after `make lock`.
test-latest:
	rm -rf .venv-latest
	$(PY) -m venv .venv-latest
	.venv-latest/bin/pip install -q torch==2.13.0
	.venv-latest/bin/pip install -q --upgrade -e ".[test]"
	.venv-latest/bin/python -P -m pytest -m "not slow"

# README gallery: the demo's heatmap, timeline and per-layer plots, and a sweep plot, copied to docs/img/, with
# docs/img/gallery.json recording the figures they show (tests/test_gallery.py checks it against fresh runs).
GALLERY_SWEEP := out/gallery-sweep
GALLERY_SWEEP_FILE := examples/sweep.toml
gallery: demo
	rm -f $(GALLERY_SWEEP)/sweep.csv
	$(BIN)/wse-sim sweep $(GALLERY_SWEEP_FILE) --out $(GALLERY_SWEEP) --plot --quiet
	cp $(OUT)/utilization.png $(OUT)/timeline.png $(OUT)/layers.png $(GALLERY_SWEEP)/sweep.png docs/img/
	$(BIN)/python -P -m wse_sim.report.gallery --report $(OUT)/report.json --sweep-csv $(GALLERY_SWEEP)/sweep.csv \
		--sweep-file $(GALLERY_SWEEP_FILE) --img-dir docs/img

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/run_benchmarks.py

clean:
	rm -rf $(VENV) .venv-lock .venv-latest out build *.egg-info
