# One way to set things up: a virtual environment in .venv with torch 2.13.0
# (the CPU build; CUDA is used automatically when a CUDA build and a GPU are present).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: setup demo test test-fast bench bench-quick clean

# torch first (the CPU or CUDA build you choose), then the library.
$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	touch $@

# The demo needs the library and its dependencies only (matplotlib for the report, tqdm).
$(VENV)/.demo: $(VENV)/.torch pyproject.toml
	$(BIN)/python -m pip install -q -e .
	touch $@

# The tests need the test extra as well (slicer-core, trame-slicer, Playwright, Dask, ...).
$(VENV)/.test: $(VENV)/.torch pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.test

demo: $(VENV)/.demo
	$(BIN)/deeplungreg demo -o demo-output

test: setup
	$(BIN)/python -m pytest -q -ra Testing/pytest

# The quick tests: everything not marked slow (under 2 minutes on 2 cores). --check-modules fails the run
# unless the tests that ran exercised every DeepLungRegLib module (ran one of its functions).
test-fast: setup
	$(BIN)/python -m pytest -q -ra -m "not slow" --check-modules Testing/pytest

# Every method and the baselines (ConvexAdam default and best setting, elastix) on small and
# large pairs simulated from two real CTs in ../shared/data with a seed not used for tuning,
# in both directions (several hours on 2 CPU cores); tables in bench-output/latest.
DATA ?= ../shared/data
BENCH_ARGS = --methods all --baselines convexadam,convexadam-best,elastix \
	--simulated $(DATA)/popi/popi00.nrrd $(DATA)/pyradiomics/lung1_image.nrrd --amplitudes small,large --seeds 2 --directions inhale,exhale

bench: setup
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/deeplungreg benchmark $(BENCH_ARGS) -o bench-output/latest --overwrite

bench-quick: setup
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/deeplungreg benchmark $(BENCH_ARGS) --quick -o bench-output/quick --overwrite

clean:
	rm -rf $(VENV) demo-output bench-output *.egg-info
