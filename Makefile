# Two entry points for a fresh machine:
#   make demo   set up .venv, install torch 2.13.0 (CPU) then fedprune, run on the embedded data
#   make test   set up .venv with the test extras and run the whole suite
#   make install-flower   add the Flower app's extra (flwr) to .venv
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= runs/demo
# How torch is installed, before anything else.  `torch==2.13.0` takes the CPU wheel where pip
# is set up to find one (as on the project's own machines); on an ordinary Linux machine PyPI
# serves a multi-GB CUDA build for it.  For the CPU build there, point pip at PyTorch's CPU
# index, e.g.  make demo TORCH_PIP_ARGS='--index-url https://download.pytorch.org/whl/cpu'
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# torch first: a bare `torch` requirement from fedprune would pull a multi-GB CUDA build
	$(BIN)/python -m pip install $(TORCH_PIP_ARGS) '$(TORCH_SPEC)'

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-flower: $(VENV)/.installed
	$(BIN)/python -m pip install -e '.[flower]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -e '.[test,data,flower,executorch,hf]'
	touch $@

.PHONY: install install-flower demo test bench
install: $(VENV)/.installed

# the Flower app's extra (flwr[simulation]): puts flwr, flower-superlink, flower-supernode in $(BIN)
install-flower: $(VENV)/.installed-flower

demo: install
	rm -rf $(OUT)
	$(BIN)/fedprune run --out $(OUT)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/prune_vs_dense.py --seeds 0 1 2
