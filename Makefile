# The two commands of the README's Quickstart, and the pieces they are made of.
#   make demo   set up, fetch the default model, run an agent task on it
#   make test   set up with the test extras (and the system pieces), run the whole suite

PYTHON      ?= python3
VENV        ?= .venv
BIN         := $(VENV)/bin
PY          := $(BIN)/python
TORCH_CPU   ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test venv install install-test system-deps lint typecheck clean

# ---- environment -----------------------------------------------------------------------------

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Install torch first: the CPU build when there is no CUDA GPU, so the venv stays small
# (an open range would pull a multi-GB CUDA build).
$(VENV)/.torch: | $(BIN)/python
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "CUDA GPU found: installing torch with CUDA"; $(PY) -m pip install --quiet torch; \
	else \
		echo "no CUDA GPU: installing the CPU build $(TORCH_CPU)"; $(PY) -m pip install --quiet "$(TORCH_CPU)"; \
	fi
	@touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@ $(VENV)/.installed

venv install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# System pieces the suite uses, installed only as root on Debian when missing. Elsewhere the
# tests that need them skip with a one-line reason.
system-deps:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		missing=""; \
		command -v bwrap >/dev/null 2>&1 || missing="$$missing bubblewrap"; \
		[ -e /usr/lib/x86_64-linux-gnu/libseccomp.so.2 ] || [ -e /usr/lib/aarch64-linux-gnu/libseccomp.so.2 ] || missing="$$missing libseccomp2"; \
		command -v tmux >/dev/null 2>&1 || missing="$$missing tmux"; \
		[ ! -x /usr/bin/python3 ] || /usr/bin/python3 -c 'import numpy, pandas' 2>/dev/null || missing="$$missing python3-numpy python3-pandas"; \
		ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
		if [ -n "$$missing" ]; then \
			echo "installing system packages:$$missing"; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
				|| echo "warning: could not install$$missing; the tests needing them will skip"; \
		fi; \
	fi

# ---- the two README commands ----------------------------------------------------------------

demo: $(VENV)/.installed
	$(BIN)/maestro model pull smollm2-135m-instruct
	$(PY) examples/quickstart.py

test: $(VENV)/.installed-test system-deps
	$(BIN)/pytest $(PYTEST_ARGS)

# ---- development ------------------------------------------------------------------------------

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
