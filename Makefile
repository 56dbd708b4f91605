# Two commands set everything up: `make train` and `make test`. Each installs into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LOCK := requirements.lock
LOCKED := $(VENV)/.locked
STAMP := $(VENV)/.installed
# Where pip finds torch's CPU build on this machine (its pip config); `make lock` looks there too.
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))

.PHONY: install lock train test test-avx2 lint clean

install: $(STAMP)

# Every dependency exactly as locked, each checked against its hashes.
$(LOCKED): $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	touch $@

# The project itself, editable, built by the locked setuptools; with no index, a dependency of
# pyproject.toml (extras included) that the lock does not hold fails here instead of floating in.
$(STAMP): $(LOCKED) pyproject.toml
	$(PY) -m pip install --quiet --no-index --no-build-isolation -e '.[dev]' \
	    || { echo "$(LOCK) lacks what pyproject.toml asks for: run make lock" >&2; exit 1; }
	touch $@

# Regenerate the lock from pyproject.toml (every extra the tests use) and constraints.txt. Pins
# already in the lock are kept unless UPGRADE=1; a dependency added to pyproject.toml is resolved.
lock: $(LOCKED)
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev -c constraints.txt --generate-hashes \
	    --python $(PY) $(if $(FIND_LINKS),--find-links $(FIND_LINKS)) $(if $(UPGRADE),--upgrade) \
	    --custom-compile-command "make lock" --quiet -o $(LOCK)

train: install
	$(PY) -m mnist_cnn train $(ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

# The tests that check a trained model's quality, run as a CPU without AVX-512 would run them:
# oneDNN, ATen and MKL held to AVX2 pick other kernels, so the shared run trains to a slightly
# different model. A margin that only one instruction set clears fails here first (CI runs both).
QUALITY_TESTS := tests/test_predict.py tests/test_anatomy.py tests/test_export.py \
	tests/test_serve.py tests/test_datasets.py \
	tests/test_distributed.py::test_two_processes_take_the_steps_one_process_takes \
	tests/test_read.py::test_touching_digits_are_cut_apart \
	tests/test_read.py::test_a_wide_digit_is_not_split
AVX2_ENV := ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2

test-avx2: install
	$(AVX2_ENV) $(PY) -m pytest $(QUALITY_TESTS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .mypy_cache
