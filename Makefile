# Set-up and everyday commands. Each target creates the virtual environment on
# first use and installs exactly the tested versions (requirements.lock).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test bench-dynamic clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2

bench-dynamic: $(STAMP)
	$(BIN)/python -m experiments.benchmark_dynamic --output benchmark_dynamic.json

clean:
	rm -rf $(VENV) .pytest_cache
