# One virtual environment, everything installed from the package index (no other network needed).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup demo lint test test-unit benchmark bench-coreset clean

setup: $(VENV)/.installed

# torch/torchvision pinned to the release known to work with anomalib 2.7 (served from local disk in CI).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: setup  ## the main job: SyntheticGPD -> train -> test -> OpenVINO export -> OpenVINO inference
	$(BIN)/python tools/demo.py --out results/demo

lint: setup  ## ruff with anomalib's rule set (pyproject.toml): the checks and the formatting
	$(BIN)/ruff check src tools tests
	$(BIN)/ruff format --check src tools tests

test: setup  ## the test suite
	$(BIN)/python -m pytest tests

test-unit: setup  ## the fast part: unit tests only (no training through the Engine, no export)
	$(BIN)/python -m pytest tests/unit

benchmark: setup  ## the README benchmark grid (AMFS, PNI, AlignedPNI, Patchcore, Padim on ../shared/data + SyntheticGPD, 256 px; ~90 min on 2 cores)
	$(BIN)/python tools/benchmark.py --config configs/benchmark/default.yaml --out results/benchmark

bench-coreset: setup  ## our coreset vs anomalib's KCenterGreedy on 335 magnetic_tile images (~25 min)
	$(BIN)/python experiments/house/bench_coreset.py --images ../shared/data/magnetic_tile/train/good --limit 335 --size 256 --out results/coreset_bench_335.json

clean:
	rm -rf $(VENV) results
