# One command installs (into .venv) and runs each job. `make lint` and `make test` are what CI runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE := offline
export PYTHONUNBUFFERED := 1

.PHONY: install lint test test-fast demo bench clean

# The exact known-good set (constraints.txt) of the ranges that pyproject.toml declares, with every extra.
$(STAMP): pyproject.toml setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Two workers, each running whole files (--dist loadfile: a file's module fixtures are built once), one thread
# each (tests/conftest.py): one worker's imports, pip installs and subprocess start-ups overlap the other's work.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15 tests

# The inner loop: everything but the tests marked slow (processes, training, installs; README "Tests").
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" tests

# The main job: SimZSS vs LiT on synthetic scenes, trained and evaluated on the CPU (report in demo_output/report/)
demo: $(STAMP)
	$(VENV)/bin/simzss-demo --output demo_output

bench: $(STAMP)
	$(PY) benchmarks/step_overhead.py

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info
