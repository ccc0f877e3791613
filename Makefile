# One way to set things up: a virtual environment in .venv with torch 2.13.0
# (the CPU build; CUDA is used automatically when a CUDA build and a GPU are present).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: setup demo test bench clean

$(BIN)/deeplungreg: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/deeplungreg

demo: setup
	$(BIN)/deeplungreg demo -o demo-output

test: setup
	$(BIN)/python -m pytest -q -ra Testing/pytest

bench: setup
	$(BIN)/python benchmarks/bench_adam.py

clean:
	rm -rf $(VENV) demo-output bench-output *.egg-info
