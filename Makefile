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

# The main job: the shapes CrossKD pair end to end, distilled from the teacher that ships with the
# package (gfl_r10t.shapes in kdzoo/weights/, so no teacher is trained first). Generates the shapes
# data if missing, trains the student baseline and the CrossKD student (same schedule and seed) one
# after the other with every core, evaluates the teacher on the same images and prints the AP table
# (docs/training.md, "Shapes: make run"). --resume makes it restartable: a killed run continues, a
# finished one is only reported.
MAIN_JOB ?= recipes/shapes/make_run/gfl_student.yaml recipes/shapes/make_run/gfl_crosskd.yaml

run: $(STAMP)
	@test -f data/shapes/shapes_meta.json || $(PY) -m kdzoo shapes --out data/shapes
	$(PY) -m kdzoo compare $(MAIN_JOB) --teacher gfl_r10t.shapes --processes 1 --resume

bench: $(STAMP)
	$(PY) benchmarks/bench_inference.py

# Gradio demo on http://127.0.0.1:7860, offline, with the embedded checkpoints (DEMO_ARGS="--port 8000 --models ...").
demo: $(STAMP)
	$(PY) demo/app.py $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
