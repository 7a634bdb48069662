# Two entry points for a fresh clone with only python3: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo_out

.PHONY: demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# The main job on an embedded default: synthesize a small MoE, search its engine knobs in an
# Optuna study (studies/demo.toml), then print the Pareto front, write tuned.toml + report.html.
demo: $(BIN)/.installed
	$(BIN)/python -m autoresearch demo studies/demo.toml --out $(DEMO)

test: $(BIN)/.installed
	$(BIN)/ruff check engine autoresearch tests benchmarks
	$(BIN)/python -m pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check engine autoresearch tests benchmarks
	$(BIN)/ruff format --check engine autoresearch tests benchmarks

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .ruff_cache
