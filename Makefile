# make demo: train the quickstart recipe. make test: check the layer contracts (pyproject.toml), then run the test
# suite but the tests marked heavy, one pytest-xdist worker per core (an idle worker takes tests from a busy one;
# tests/conftest.py shares the cores out). make test-all: the same with the heavy tests, before a release or a stop.
# All set up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-all test-fast data test-packages venv bench clean

demo: $(STAMP) data
	$(BIN)/reprocls train configs/quickstart.yaml

test: $(STAMP) data test-packages
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -n auto --dist worksteal -m "not heavy"

test-all: $(STAMP) data test-packages
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -n auto --dist worksteal

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP) data
	$(BIN)/python benchmarks/train_throughput.py

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

data:
	@scripts/install-fashion-mnist.sh

test-packages:
	@scripts/install-test-packages.sh

clean:
	rm -rf runs .data .pytest_cache
