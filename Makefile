# elit — set-up and everyday commands.  `make demo` runs the embedded demo, `make test` the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.elit-installed

.PHONY: install demo test bench schemas clean

install: $(STAMP)

# torch/torchvision are pinned first: a matching pair is on this kind of machine's disk,
# and an unpinned torch would download several GB.
$(STAMP): pyproject.toml plugins/elit-example/pyproject.toml plugins/elit-multislice/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e ".[test,dask]"
	$(PIP) install -q -e plugins/elit-example
	$(PIP) install -q -e plugins/elit-multislice
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/elit demo --out elit-demo --overwrite

test: $(STAMP)
	$(PY) -m pytest -q tests plugins/elit-example/tests plugins/elit-multislice/tests

bench: $(STAMP)
	$(PY) bench/run_all.py

schemas: $(STAMP)
	rm -f schemas/*.schema.json
	$(VENV)/bin/elit schema --out schemas --overwrite

clean:
	rm -rf $(VENV) elit-demo .pytest_cache
