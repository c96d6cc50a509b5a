# The two commands of the README, and the set-up they share.
#   make demo   train RetinaNet with mmloss.FocalLoss on the bundled dataset
#   make test   run the test suite (make test-slow: the end-to-end runs)
# Both create .venv and install the pinned stack on first use; afterwards the
# set-up is a no-op (the stamp file .venv/.installed is newer than setup.py).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

# The prebuilt mmcv wheel for this stack, when the shared folder is beside us.
SHARED_WHEELS ?= ../shared/wheels
FIND_LINKS := $(if $(wildcard $(SHARED_WHEELS)/*.whl),--find-links $(abspath $(SHARED_WHEELS)),)

TORCH_VERSION ?= 2.13.0
MMENGINE_VERSION ?= 0.10.7
MMCV_VERSION ?= 2.1.0
MMDET_VERSION ?= 3.3.0

PYTEST_ARGS ?=
DEMO_CONFIG ?= configs/retinanet/retinanet_r18_focal_shapes.py
DEMO_WORK_DIR ?= work_dirs/demo

.PHONY: setup test test-slow test-all demo benchmark clean-venv

setup: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# <81: mmengine imports pkg_resources (see the mmdet extra in setup.py).
	$(PIP) install "setuptools>=77,<81" wheel
	# torch first: mmcv's source build compiles against the installed torch.
	$(PIP) install torch==$(TORCH_VERSION) mmengine==$(MMENGINE_VERSION)
	MMCV_WITH_OPS=1 $(PIP) install --no-build-isolation $(FIND_LINKS) mmcv==$(MMCV_VERSION)
	$(PIP) install mmdet==$(MMDET_VERSION)
	$(PIP) install --no-build-isolation -e ".[mmdet,tests,viz]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-all: test test-slow

demo: $(STAMP)
	$(PY) tools/train.py $(DEMO_CONFIG) --work-dir $(DEMO_WORK_DIR)

benchmark: $(STAMP)
	$(PY) tools/benchmark.py

clean-venv:
	rm -rf $(VENV)
