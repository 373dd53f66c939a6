# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Both create .venv and install into it. On a CPU-only machine torch is pinned to the CPU build
# (torch==2.13.0; an unpinned torch pulls gigabytes of CUDA). On a GPU machine with CUDA torch
# already installed, use `make demo VENV_FLAGS=--system-site-packages TORCH_SPEC=` (see README).
PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
TORCH_SPEC ?= torch==2.13.0 triton==3.7.1
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

VENV_CUDA ?= .venv-cuda
CUDA_STAMP := $(VENV_CUDA)/.installed

.PHONY: install demo test lint-imports bench-quick bench gpu-check-dry aot rehearsal clean-data

$(STAMP): setup.cfg
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if [ -n "$(TORCH_SPEC)" ]; then $(PY) -m pip install -q $(TORCH_SPEC); fi
	$(PY) -m pip install -q -e '.[dev,plot,download]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m pipelines.demo

test: $(STAMP)
	$(PY) -m pytest tests

# the floor plan (README, Architecture): imports run one way down the layers, no cycles (contracts in setup.cfg)
lint-imports: $(STAMP)
	$(VENV)/bin/lint-imports

bench-quick: $(STAMP)
	$(PY) -m bench --quick

bench: $(STAMP)
	$(PY) -m bench

# ahead-of-time kernel report: every kernel config compiled for sm_80 and sm_90a, no GPU (bench/aot, bench/AOT.md)
aot: $(STAMP)
	$(PY) -m bench.aot

# the GPU check's plumbing on the CPU (CI): every stage's selection runs at quick shapes; nothing is measured
gpu-check-dry: $(STAMP)
	$(PY) -m bench.gpu_check --dry-run --out $$(mktemp -d) --budget-s 900

# the fake-CUDA rehearsal (bench/rehearsal, bench/REHEARSAL.md): the seed model on fake CUDA tensors under CUDA's
# autocast, no GPU. Its own venv with the CUDA build of torch 2.13.0 from PyPI (about 4.7 GB; the machine's pip
# config, which prefers the local CPU wheel, is bypassed), the package run from the source tree.
$(CUDA_STAMP):
	$(PYTHON) -m venv $(VENV_CUDA)
	PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= $(VENV_CUDA)/bin/python -m pip install -q torch==2.13.0 numpy \
		sentencepiece zstandard tqdm
	touch $(CUDA_STAMP)

rehearsal: $(CUDA_STAMP)
	$(VENV_CUDA)/bin/python -m bench.rehearsal --write
