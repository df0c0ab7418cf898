# Common commands. `make run` installs everything and processes the bundled reviews;
# `make test` runs the whole suite (unit, integration on real PostgreSQL/Redis, chaos).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install run test unit integration chaos lint typecheck train evaluate clean

$(BIN)/inferq: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls gigabytes of CUDA wheels.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[model,dev]"
	touch $@

install: $(BIN)/inferq

run: install
	$(BIN)/inferq process examples/reviews.jsonl --task sentiment --output results.jsonl

test: install
	$(BIN)/pytest

unit: install
	$(BIN)/pytest tests/unit

integration: install
	$(BIN)/pytest tests/integration tests/chaos

# The heavy chaos run: the same scenarios as `make test`, sized up (30 worker SIGKILLs during
# 10,000 inputs, 20,000 Kafka requests, ...). Figures in var/chaos-summary.json.
chaos: install
	INFERQ_CHAOS_SCALE=full $(BIN)/pytest tests/chaos -m chaos -rxX

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

train: install
	$(BIN)/inferq models train sentiment

evaluate: install
	$(BIN)/inferq models evaluate sentiment

clean:
	rm -rf $(VENV) var results.jsonl .pytest_cache .mypy_cache .ruff_cache
