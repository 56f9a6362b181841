# The two commands a newcomer needs: `make demo` (the main job) and `make test` (the suite).
# Each creates .venv on first use and reuses it afterwards.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test test-all lint clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m tfqat.train --flagfile=configs/yolo_synthetic.flags

# The suite CI runs: the linter and formatter check, then everything but the tests marked slow.
test: $(STAMP) lint
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Every test, slow ones included (device-install venvs, the pose and prune smoke recipes, ...).
test-all: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf runs .pytest_cache
