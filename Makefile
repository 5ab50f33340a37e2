# Two commands do all the set-up on a fresh machine (Python 3.11): `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The venv is rebuilt when the requirement files change.
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt pyproject.toml 2>/dev/null | cksum | cut -d' ' -f1)

PYTEST_ARGS ?=

.PHONY: install host demo test lint bench gpu-suite gpu-bundle toy-loop toy-multiref clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# ComfyUI imports torchvision; this pair installs and runs on CPU (users' ComfyUI brings its own torch).
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -r requirements-dev.txt
	# The offline toolkit itself (editable): console scripts dsd, dsd-datagen, dsd-train.
	$(PY) -m pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# The ComfyUI host the tests run against: COMFYUI_PATH, the enclosing ComfyUI, or .cache/ComfyUI (prepared
# from the pinned v0.8.0 + ComfyUI-GGUF: git when online, ../shared/vendor archives otherwise).
host:
	$(PYTHON) scripts/comfyui_host.py prepare

demo: install
	bash scripts/demo.sh

test: install host
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2 --durations=15 $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .

bench: install host
	for b in benchmarks/*.py; do case $$b in */__init__.py|*_host.py|*/gpu_*.py|*/throughput_table.py|*/toy_loop.py|*/toy_recipe.py|*/toy_multiref.py|*/toy_ablations.py|*/toy_sides_diagnosis.py) continue;; esac; m=$$(basename $$b .py); \
	  echo "== benchmarks.$$m"; $(PY) -m benchmarks.$$m || exit 1; done

# The one prepared GPU measurement (needs CUDA; GPU_SUITE_ARGS=--tiny runs it on the CPU at toy shapes).
gpu-suite: install host
	$(PY) -m benchmarks.gpu_suite --out outputs/gpu_suite $(GPU_SUITE_ARGS)

# What gpu-suite needs on a GPU machine without network, in .gpu_bundle/ (README: "Run the GPU suite on a GPU").
gpu-bundle: host
	bash scripts/gpu_bundle.sh build

# Issue 19: does the pipeline learn? The whole loop on the toy domain on the CPU (README: "Toy learning loop").
toy-loop: install
	$(PY) -m benchmarks.toy_loop --out outputs/toy_loop

# Issue 20: do several references carry more of an identity? The toy loop on the sides (README: "Multi-reference proof").
toy-multiref: install
	$(PY) -m benchmarks.toy_multiref --out outputs/toy_multiref --whole-targets

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache .cache .gpu_bundle
