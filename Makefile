# Viewfinder: two commands on a fresh clone.
#   make test   sets up everything and runs all tests
#   make demo   sets up everything and builds the demo film end to end (FAMILY=sdxl|flux: on that family)
# Setup makes three virtual environments at the repository root:
#   .venv         Blender 5.0 as a Python module (bpy 5.0.1) for the add-on's tests and the demo
#   .venv-bpy42   Blender 4.2 LTS (bpy 4.2.23): the add-on's tests again on the oldest supported line
#   .venv-engine  the generation engine (torch, diffusers, ...): a separate process, as in production

PYTHON ?= python3
PIP_FLAGS ?= --disable-pip-version-check --quiet
PYTEST_FLAGS ?= -q

.PHONY: all setup test test-unit test-blender test-blender42 test-engine demo build benchmark clean toy-data toy-models

all: test

setup: .venv/.installed .venv-bpy42/.installed .venv-engine/.installed

.venv/.installed: requirements/blender-5.0.txt
	$(PYTHON) -m venv .venv
	.venv/bin/pip install $(PIP_FLAGS) -r $<
	touch $@

.venv-bpy42/.installed: requirements/blender-4.2.txt
	$(PYTHON) -m venv .venv-bpy42
	.venv-bpy42/bin/pip install $(PIP_FLAGS) -r $<
	touch $@

.venv-engine/.installed: engine/requirements.txt engine/constraints.txt engine/requirements-ray.txt engine/constraints-ray.txt
	$(PYTHON) -m venv .venv-engine
	.venv-engine/bin/pip install $(PIP_FLAGS) -r engine/requirements.txt -c engine/constraints.txt pytest==9.2.0
	# Optional for users, installed here so the tests cover it: the engine on Ray Serve (serve-ray).
	.venv-engine/bin/pip install $(PIP_FLAGS) -r engine/requirements-ray.txt -c engine/constraints.txt -c engine/constraints-ray.txt
	touch $@

# The Blender-side tests start real engine processes with this interpreter.
export VIEWFINDER_TEST_ENGINE_PYTHON := $(CURDIR)/.venv-engine/bin/python

test: setup test-unit test-engine test-blender test-blender42

test-unit: setup
	.venv/bin/python -m pytest $(PYTEST_FLAGS) tests/unit
	.venv-engine/bin/python -m pytest $(PYTEST_FLAGS) tests/unit

test-engine: setup
	.venv-engine/bin/python -m pytest $(PYTEST_FLAGS) tests/engine

test-blender: setup
	.venv/bin/python -m pytest $(PYTEST_FLAGS) tests/blender

test-blender42: setup
	.venv-bpy42/bin/python -m pytest $(PYTEST_FLAGS) tests/blender

build: .venv/.installed
	.venv/bin/python -c "import bpy, pathlib, subprocess, sys; cli = pathlib.Path(bpy.utils.system_resource('SCRIPTS')) / 'addons_core/bl_pkg/cli/blender_ext.py'; subprocess.run([sys.executable, str(cli), 'validate', '.'], check=True); subprocess.run([sys.executable, str(cli), 'build', '--source-dir', '.', '--output-dir', 'dist'], check=True)"

# FAMILY=sdxl or FAMILY=flux: the same film on that model family (tiny random-weight models offline).
demo: setup
	.venv/bin/python demo/run_demo.py $(if $(FAMILY),--family $(FAMILY))

# The toy-world models (engine/testing/toy/MODEL_CARD.md): the dataset, rendered in Blender, then
# the training that reproduces the committed weights: five runs, each from the one before (about four
# hours on 2 CPU cores).
# `make test` does not retrain.
TOY_DATA ?= build/toyworld
toy-data: .venv/.installed
	.venv/bin/python toyworld/generate.py --out $(TOY_DATA) --split train --shots 800 --frames 8 --workers 2

toy-models: toy-data .venv-engine/.installed
	OMP_NUM_THREADS=1 .venv-engine/bin/python -m engine.testing.toy.train --data $(TOY_DATA) \
		--out build/toy-run1 --seed 0
	OMP_NUM_THREADS=1 .venv-engine/bin/python -m engine.testing.toy.train --data $(TOY_DATA) \
		--out build/toy-run2 --resume build/toy-run1 --depth-steps 900 --pose-steps 250 \
		--zero-lr 3e-3 --high-noise 0.7
	OMP_NUM_THREADS=1 .venv-engine/bin/python -m engine.testing.toy.train --data $(TOY_DATA) \
		--out build/toy-run3 --resume build/toy-run2 --continue-nets --joint --unet-rate 0.5 \
		--zero-lr 1e-3 --high-noise 0.3 --depth-steps 2000 --pose-steps 200 --seed 4
	OMP_NUM_THREADS=1 .venv-engine/bin/python -m engine.testing.toy.train --data $(TOY_DATA) \
		--out build/toy-run4 --resume build/toy-run3 --continue-nets --joint --unet-rate 0.5 \
		--zero-lr 1e-3 --high-noise 0.3 --depth-steps 2500 --pose-steps 250 --seed 5
	OMP_NUM_THREADS=1 .venv-engine/bin/python -m engine.testing.toy.train --data $(TOY_DATA) \
		--out engine/testing/toy/weights --resume build/toy-run4 --continue-nets --joint --unet-rate 1.0 \
		--zero-lr 1e-3 --high-noise 0.3 --depth-steps 2000 --pose-steps 200 --seed 6
	.venv-engine/bin/python -m engine.testing.toy.card

benchmark: setup
	.venv/bin/python benchmarks/bench_conditioning.py
	.venv-engine/bin/python benchmarks/bench_engine.py

clean:
	rm -rf .venv .venv-bpy42 .venv-engine dist build demo/out .pytest_cache
