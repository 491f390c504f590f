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

# The main job: shapes teacher + student baseline from scratch, evaluated (about 15 min on 2 cores).
# --resume makes it restartable: a killed run continues, a finished one is only re-evaluated.
SHAPES_TEACHER ?= recipes/shapes/gfl_r18_teacher.yaml
SHAPES_STUDENT ?= recipes/shapes/gfl_r18_student.yaml

run: $(STAMP)
	@test -f data/shapes/shapes_meta.json || $(PY) -m kdzoo.data.shapes --out data/shapes
	$(PY) -m kdzoo.train $(SHAPES_TEACHER) --resume
	$(PY) -m kdzoo.train $(SHAPES_STUDENT) --resume
	$(PY) -m kdzoo.eval --summary $(SHAPES_TEACHER) $(SHAPES_STUDENT)

bench: $(STAMP)
	$(PY) benchmarks/bench_inference.py

# Gradio demo on http://127.0.0.1:7860, offline, with the embedded checkpoints (DEMO_ARGS="--port 8000 --models ...").
demo: $(STAMP)
	$(PY) demo/app.py $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
