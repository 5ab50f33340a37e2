# Two commands do all the set-up on a fresh machine (Python 3.11): `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The venv is rebuilt when the requirement files change.
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt 2>/dev/null | cksum | cut -d' ' -f1)

PYTEST_ARGS ?=

.PHONY: install demo test lint bench clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# ComfyUI imports torchvision; this pair installs and runs on CPU (users' ComfyUI brings its own torch).
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -r requirements-dev.txt
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

demo: install
	bash scripts/demo.sh

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2 --durations=15 $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .

bench: install
	for b in benchmarks/*.py; do case $$b in *_host.py) continue;; esac; echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
