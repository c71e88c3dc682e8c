# The two commands of the README: `make run` and `make test` (`make test-fast`: the quick
# part of the tests). All set everything up.
PYTHON ?= python3
VENV ?= .venv
# torch and torchvision are installed first, pinned, so pip takes the builds this
# machine has on disk; pyproject.toml itself only asks for torch>=2.5, torchvision>=0.20.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
RUN_DIR ?= runs/fashion-mnist
ALEXNET = $(VENV)/bin/alexnet

.PHONY: run test test-fast lint setup setup-test data clean

# Two install sets: `make run` needs only the package (train, evaluate, samples, predict
# draw nothing); `make test` adds the `test` extra (pytest, ruff, playwright, onnx, ...).
RUN_EXTRAS ?=
TEST_EXTRAS ?= test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -c "import torch, torchvision" 2>/dev/null || $(VENV)/bin/pip install $(TORCH_SPEC)
	$(VENV)/bin/pip install -e ".$(if $(RUN_EXTRAS),[$(RUN_EXTRAS)])"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(VENV)/bin/pip install -e ".[$(TEST_EXTRAS)]"
	touch $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

# Fashion-MNIST from Debian's dataset-fashion-mnist package (no download).
data:
	@if [ -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST: $(FASHION_MNIST_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y dataset-fashion-mnist || { apt-get update && apt-get install -y dataset-fashion-mnist; }; \
	else \
		echo "Fashion-MNIST is missing: run 'sudo apt-get install -y dataset-fashion-mnist' (Debian/Ubuntu)," ; \
		echo "or put the four *-ubyte.gz files in a folder and set FASHION_MNIST_DIR=that/folder"; \
		exit 1; \
	fi

run: setup data
	$(ALEXNET) train --data-dir $(FASHION_MNIST_DIR) --out $(RUN_DIR)
	$(ALEXNET) evaluate $(RUN_DIR)/last.pt
	$(ALEXNET) samples --data-dir $(FASHION_MNIST_DIR) --count 6 --out $(RUN_DIR)/samples
	$(ALEXNET) predict $(RUN_DIR)/last.pt --topk 3 $(RUN_DIR)/samples/*.png

# ruff's lint and format checks (pyproject.toml), then every test
lint: setup-test
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/ruff format --check src tests benchmarks tools

test: setup-test data lint
	FASHION_MNIST_DIR=$(FASHION_MNIST_DIR) $(VENV)/bin/python -m pytest

# The tests not marked slow (pyproject.toml: none trains, starts a subprocess, compiles or
# exports, or takes seconds): under a minute on 2 cores.
test-fast: setup-test data
	FASHION_MNIST_DIR=$(FASHION_MNIST_DIR) $(VENV)/bin/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
