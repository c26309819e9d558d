# Two entry points for a fresh machine:
#   make demo   set up .venv, install torch 2.13.0 (CPU) then fedprune, run on the embedded data
#   make test   set up .venv with the test extras and run the whole suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= runs/demo

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# the CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build
	$(BIN)/python -m pip install torch==2.13.0

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -e '.[test,data,flower,executorch]'
	touch $@

.PHONY: install demo test bench
install: $(VENV)/.installed

demo: install
	rm -rf $(OUT)
	$(BIN)/fedprune run --out $(OUT)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/prune_vs_dense.py --seeds 0 1 2
