# The two commands set themselves up: `make stylize` and `make test` create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/example.yaml
STAMP := $(VENV)/.installed

.PHONY: stylize test bench bench-video bench-tiling bench-precision install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test,dask]'
	touch $(STAMP)

install: $(STAMP)

stylize: $(STAMP)
	$(BIN)/stylize run $(CONFIG)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench

# The temporal-consistency figures: three renders of 48 video frames, about 25 minutes on 2 cores.
bench-video: $(STAMP)
	$(BIN)/python -m bench --skip-core --skip-pipeline --video

# bf16 against fp32 on six content x style pairs (speed and evaluator scores): about 8 minutes on 2 cores.
bench-precision: $(STAMP)
	$(BIN)/python -m bench --skip-core --skip-pipeline --precision

# Tiled optimisation at 1024, 2048 and 4096 px, and tiled against untiled: about 25 minutes on 2 cores.
bench-tiling: $(STAMP)
	$(BIN)/python -m bench --skip-core --skip-pipeline --tiling

clean:
	rm -rf out bench/out .pytest_cache
