# Two commands set up a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.idcmap-installed
DEMO_SLIDE ?= $(firstword $(wildcard examples/*.tiff))
DEMO_OUT   ?= demo-out

.PHONY: env demo test lint bench clean

env: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[train,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/idcmap run $(DEMO_SLIDE) --out $(DEMO_OUT) --overwrite
	@echo
	@echo "Outputs for $(DEMO_SLIDE) are in $(DEMO_OUT)/$(basename $(notdir $(DEMO_SLIDE)))/:"
	@ls -l $(DEMO_OUT)/$(basename $(notdir $(DEMO_SLIDE)))/

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check idcmap tests benchmarks

# Makes the benchmark slides once (~20 min on 2 cores; skipped when they exist), then runs the
# benchmark (~6 min). WSInfer joins when its venv exists: benchmarks/wsinfer_compare.py --setup.
bench: $(STAMP)
	$(BIN)/python benchmarks/make_slides.py --mosaic ../shared/data/idc/slides/8975.tiff
	$(BIN)/python benchmarks/run.py --slides 40x,l1l4,mosaic,2x2 --strides 50,25 \
	    --cases e2e,floors,naive --wsinfer auto

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .ruff_cache
