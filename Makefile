# Two commands set up a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# inference only (what `make demo` needs); the test/dev extras come on top for `make test`
RUN_STAMP := $(VENV)/.idcmap-run
DEV_STAMP := $(VENV)/.idcmap-dev
DEV_EXTRAS ?= train,dev,distributed
DEMO_SLIDE ?= $(firstword $(wildcard examples/*.tiff))
DEMO_OUT   ?= demo-out

.PHONY: env env-dev demo test lint bench mutate clean

env: $(RUN_STAMP)
env-dev: $(DEV_STAMP)

$(RUN_STAMP): pyproject.toml
	@echo "== creating $(VENV) with idcmap and its inference dependencies (torch, OpenSlide, ...)"
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --progress-bar off --upgrade pip
	$(BIN)/pip install -q --progress-bar off -e .
	@rm -f $(DEV_STAMP)
	touch $@

$(DEV_STAMP): $(RUN_STAMP)
	@echo "== adding the test and development extras [$(DEV_EXTRAS)] (fastai, pytest, ruff, mypy, dask)"
	$(BIN)/pip install -q --progress-bar off -e '.[$(DEV_EXTRAS)]'
	touch $@

demo: $(RUN_STAMP)
	$(BIN)/idcmap run $(DEMO_SLIDE) --out $(DEMO_OUT) --overwrite
	@echo
	@echo "Outputs for $(DEMO_SLIDE) are in $(DEMO_OUT)/$(basename $(notdir $(DEMO_SLIDE)))/:"
	@ls -l $(DEMO_OUT)/$(basename $(notdir $(DEMO_SLIDE)))/

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy idcmap

# Makes the benchmark slides once (~20 min on 2 cores; skipped when they exist), then runs the
# benchmark (~6 min). WSInfer joins when its venv exists: benchmarks/wsinfer_compare.py --setup.
bench: $(DEV_STAMP)
	$(BIN)/python benchmarks/make_slides.py --mosaic ../shared/data/idc/slides/8975.tiff
	$(BIN)/python benchmarks/run.py --slides 40x,l1l4,mosaic,2x2 --strides 50,25 \
	    --cases e2e,floors,naive --wsinfer auto

# A fixed list of realistic one-line bugs over io, pipeline, output, batch, model, viewer, each run
# against the tests that cover its module (~20 min on 2 shared cores; not part of `make test`;
# `benchmarks/mutate.py --module batch/runner.py` runs a part). Prints the score.
mutate: $(DEV_STAMP)
	nice -n 15 $(BIN)/python benchmarks/mutate.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .ruff_cache .mypy_cache
