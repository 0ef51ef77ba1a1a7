# Set-up and everyday commands. Each target creates the virtual environment on
# first use and installs exactly the tested versions (requirements.lock).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install train test bench-dynamic device-wheels clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[experiments,tfds,dev]"
	touch $(STAMP)

# glibc malloc with transparent huge pages: XLA re-faults its large per-step buffers
# otherwise (docs/performance.md). A value set by the caller stands.
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

# The main job: the default config (dynamic p4m G-CNN on BreastMNIST). Pass more
# overrides with ARGS='--set epochs=5'.
WORKDIR ?= runs/default
train: $(STAMP)
	$(BIN)/python -m experiments.train --workdir $(WORKDIR) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -n 3 --dist worksteal --durations=15

bench-dynamic: $(STAMP)
	$(BIN)/python -m experiments.benchmark_dynamic --output benchmark_dynamic.json

# Wheels of what an accelerator image lacks (grain and the packages it needs), for
# Python 3.12 on x86-64 Linux, into .whl/: the device scripts install them there.
device-wheels: $(STAMP)
	$(BIN)/python -m pip download --quiet --only-binary=:all: --no-deps --python-version 3.12 \
	  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
	  grain==0.2.18 array_record==0.8.6 etils==1.15.0 cloudpickle==3.1.3 portpicker==1.6.0 \
	  tqdm==4.70.1 psutil==7.2.2

clean:
	rm -rf $(VENV) .pytest_cache
