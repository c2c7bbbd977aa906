# Two entry points: `make demo` (the main job) and `make test`.
# torch is installed first from TORCH_SPEC so that pip never resolves a multi-GB CUDA build
# on a CPU-only machine; on a GPU machine use e.g. `make test TORCH_SPEC=torch`.
PYTHON ?= python3.11
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,zoo,distributed,tracking]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/evo-merge demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) *.egg-info
