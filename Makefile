# The two commands a newcomer needs: `make demo` (the main job) and `make test` (the suite).
# Each creates .venv on first use and reuses it afterwards.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test test-fast clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) tools/make_synthetic.py --task=detection --out=runs/synthetic_detection
	$(PY) tools/inspect_dataset.py --task=detection \
	  --annotations=runs/synthetic_detection/annotations/instances_train.json \
	  --images=runs/synthetic_detection/images/train --show=8 --out=runs/inspect_detection

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf runs .pytest_cache
