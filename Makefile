# tfedge: `make demo` and `make test` work from a fresh clone (they create .venv and install).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tfedge-installed
PYTEST_ARGS ?=

.PHONY: install demo test fuzz lint bench device-up device-down clean

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# setuptools' notice that an editable install maps tfedge.models/converters from models/ and
	@# converters/ (the layout this project chose) is expected: keep it off the first screen.
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install --quiet --editable ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tfedge demo -o demo-out

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

# The fuzz tests of `make test`, with many more examples and mutants (about 20 minutes).
fuzz: $(STAMP)
	TFEDGE_FUZZ_EXAMPLES=400 TFEDGE_FUZZ_MUTANTS=150 $(PY) -m pytest -m fuzz $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

device-up:
	bash scripts/pi-device.sh up

device-down:
	bash scripts/pi-device.sh down

clean:
	rm -rf demo-out .pytest_cache .ruff_cache *.egg-info
