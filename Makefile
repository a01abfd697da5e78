# Two commands on a fresh clone: `make demo` and `make test`. Everything else is set up here.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out/demo

.PHONY: demo test lint bench gallery clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, pinned: a CPU wheel of 2.13.0 is on this machine; an unpinned torch would pull a CUDA build.
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $@

demo: $(VENV)/.installed-test
	$(BIN)/wse-sim run --model cerebras-gpt-111m --wafer wse2 --seq 512 --batch 1 --precision fp16 --out $(OUT)

test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# README gallery: the demo's heatmap, timeline and per-layer plots, and a sweep plot, copied to docs/img/.
GALLERY_SWEEP := out/gallery-sweep
gallery: demo
	rm -f $(GALLERY_SWEEP)/sweep.csv
	$(BIN)/wse-sim sweep examples/sweep.toml --out $(GALLERY_SWEEP) --plot --quiet
	cp $(OUT)/utilization.png $(OUT)/timeline.png $(OUT)/layers.png $(GALLERY_SWEEP)/sweep.png docs/img/

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/run_benchmarks.py

clean:
	rm -rf $(VENV) out build *.egg-info
