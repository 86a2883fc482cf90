# loraops: the two commands are `make demo` and `make test`; both set up whatever is missing first.
SHELL := /bin/bash
PY := .venv/bin/python
export LORAOPS_ACCEL ?= cpu
# The environments are installed without bytecode (uv compiles on first import): a machine-wide
# PYTHONDONTWRITEBYTECODE would make every process compile its imports from source again.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: help envs demo test test-fast test-models down status lint typecheck bench lock clean-state

help:
	@echo "make demo    set up, start the local stack and run the retrain flow once"
	@echo "make test    set up and run the whole test suite (unit + e2e on the real stack)"
	@echo "make test-fast  the tests that need no server and no training, in random order (minutes)"
	@echo "make test-models  real models: the loop on SmolLM2, Gemma 3 270M converted, trained, served"
	@echo "make down    stop the services that make demo started"
	@echo "make status  show the running services and their URLs"
	@echo "make lint    ruff + mypy;  make bench  run the benchmarks in bench/"

envs:
	@bash infra/envs/ensure.sh

demo: envs
	@$(PY) -m loraops.cli demo

# make test: every test, e2e ones in file order (they share one stack per session), then the 25 slowest
# and pytest's closing line with the wall time. make test-fast: no server, no training, in random order (pytest-randomly), and
# a guard that fails a test there that opens a port or starts a service (tests/conftest.py).
test: envs
	@.venv/bin/pytest -p no:randomly --durations=25 -m "not architecture" $(PYTEST_ARGS)

# Real models alone: the loop on SmolLM2-135M-Instruct (also in make test: an over-trained adapter refused
# for forgetting) and another architecture through convert, render, train, serve (Gemma 3 270M; only here).
test-models: envs
	@.venv/bin/pytest -p no:randomly --durations=5 -m "architecture or real_model" $(PYTEST_ARGS)

test-fast: envs
	@LORAOPS_TEST_FAST=1 .venv/bin/pytest -m "not e2e and not stand_in and not slow" $(PYTEST_ARGS)

down:
	@if [ -x $(PY) ]; then $(PY) -m loraops.cli down; else echo "nothing to stop"; fi

status: envs
	@$(PY) -m loraops.cli status

lint: envs
	@.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

bench: envs
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# Recompile the lock files (needs the registries); existing pins are kept unless an .in file asks for
# another version. CUDA locks are resolved for x86_64 Linux (a GPU host, or the trainer image).
COMPILE := .venv/bin/uv pip compile -q --no-annotate --no-header --python-version 3.11
CUDA_PLATFORM := --python-platform x86_64-manylinux_2_28
lock: envs
	$(COMPILE) infra/envs/control.in -o infra/envs/control.lock.txt
	$(COMPILE) --find-links /opt/wheels infra/envs/trainer-cpu.in -o infra/envs/trainer-cpu.lock.txt
	$(COMPILE) --find-links /opt/wheels infra/envs/server-cpu.in -o infra/envs/server-cpu.lock.txt
	$(COMPILE) $(CUDA_PLATFORM) infra/envs/trainer-cuda.in -o infra/envs/trainer-cuda.lock.txt
	$(COMPILE) $(CUDA_PLATFORM) infra/envs/server-cuda.in -o infra/envs/server-cuda.lock.txt
	@echo "edit server-cpu.lock.txt: drop torchvision, torchaudio, torchcodec (see server-cpu.in)"

clean-state: down
	rm -rf .loraops
