# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install -q -c constraints.txt
# The ONNX Runtime build: ORT=onnxruntime-openvino==1.24.1 (docs/openvino.md) or another that ships the
# `onnxruntime` module. It replaces the default one after the project's requirements are in; onnxruntime-qnn
# (dev extra) needs the default build itself, so it goes too. --force-reinstall: uninstalling onnxruntime removes
# the module files both wheels share.
ORT    ?= onnxruntime
# TORCH_INDEX=https://download.pytorch.org/whl/cpu: the index torch alone is installed from, where pip's own would
# give the CUDA build (PyPI on Linux x86_64); empty: pip's own configuration (a machine whose pip finds the CPU wheel)
TORCH_INDEX ?=
define use_ort
	$(if $(filter-out onnxruntime,$(ORT)),$(BIN)/pip uninstall -q -y onnxruntime onnxruntime-qnn && \
	$(PIP) --force-reinstall --no-deps $(ORT) && \
	$(BIN)/python -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())")
endef

.PHONY: demo test test-fast test-all install dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned first (constraints.txt): a bare `torch` requirement on a CPU machine pulls CUDA wheels.
install: $(BIN)/python
	$(PIP) --upgrade pip
	$(PIP) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==2.13.0
	$(PIP) -e '.[plot]'
	$(use_ort)

dev: install
	$(PIP) -e '.[dev]'
	$(use_ort)

demo: install
	$(BIN)/compress run pipelines/digits.toml

# two pytest workers (pytest-xdist): 1.46x faster than one on the 2-core CI box (375 against 546 s, 2026-12-07),
# whose tests spend much of their time in single-threaded Python; PYTEST_WORKERS=0 runs them in this process
PYTEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS)

test: dev
	$(PYTEST)

# the edit-test loop: no end-to-end pipeline runs (marker e2e), under 2 minutes on the 2-core CI box
test-fast: dev
	$(PYTEST) -m "not slow and not e2e"

test-all: dev
	$(PYTEST) -m ''

bench: dev
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf runs .pytest_cache
