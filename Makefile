# anomaly_bench: `make demo` and `make test` create the virtual environment and install everything.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: install test test-slow demo synth lint clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist worksteal --timeout 900 $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow --timeout 3600 $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/anomaly-bench benchmark --config benchmarks/demo.yaml

synth: install
	$(VENV)/bin/anomaly-bench synth --layout mvtec --root data/synth/mvtec

clean:
	rm -rf results runs .pytest_cache
