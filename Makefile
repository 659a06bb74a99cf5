# One command installs (into .venv) and runs each job. `make test` is what CI runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE := offline
export PYTHONUNBUFFERED := 1

.PHONY: install test demo bench clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# The main job: SimZSS vs LiT on synthetic scenes, trained and evaluated on the CPU (report in demo_output/report/)
demo: $(STAMP)
	$(PY) -m open_clip_simzss.demo --output demo_output

bench: $(STAMP)
	$(PY) benchmarks/step_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
