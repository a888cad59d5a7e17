# The two commands of the README: `make serve` (the main job) and `make test`.
# Both create the virtualenv on first use: torch==2.13.0 first (a CPU wheel), then the project.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,onnx,fast]"
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/routet2i serve --demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
