PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-slow run bench demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[demo,dev]"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# The main job (about 15 min on 2 cores): the shapes CrossKD recipe end to end. Generates the
# shapes data if missing, trains the teacher it needs, the student baseline and the CrossKD
# student (same schedule and seed), evaluates and prints the AP table. --resume makes it
# restartable: a killed run continues, a finished one is only reported.
SHAPES_RUNS ?= gfl_teacher gfl_student gfl_crosskd

run: $(STAMP)
	@test -f data/shapes/shapes_meta.json || $(PY) -m kdzoo shapes --out data/shapes
	@for r in $(SHAPES_RUNS); do $(PY) -m kdzoo train recipes/shapes/$$r.yaml --resume || exit 1; done
	$(PY) -m kdzoo eval --summary $(addprefix runs/shapes/,$(SHAPES_RUNS))

bench: $(STAMP)
	$(PY) benchmarks/bench_inference.py

# Gradio demo on http://127.0.0.1:7860, offline, with the embedded checkpoints (DEMO_ARGS="--port 8000 --models ...").
demo: $(STAMP)
	$(PY) demo/app.py $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
