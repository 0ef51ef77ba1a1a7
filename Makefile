# Set-up and everyday commands. Each target creates the virtual environment on
# first use and installs exactly the tested versions (requirements.lock).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install train test bench-dynamic clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[experiments,tfds,dev]"
	touch $(STAMP)

# The main job: the default config (dynamic p4m G-CNN on BreastMNIST). Pass more
# overrides with ARGS='--set epochs=5'.
WORKDIR ?= runs/default
train: $(STAMP)
	$(BIN)/python -m experiments.train --workdir $(WORKDIR) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --durations=15

bench-dynamic: $(STAMP)
	$(BIN)/python -m experiments.benchmark_dynamic --output benchmark_dynamic.json

clean:
	rm -rf $(VENV) .pytest_cache
