# The README's two commands are `make book` and `make test`.
# Both start from nothing: a Python 3.11 interpreter, and apt-get where the machine has it.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Building the book executes every notebook in the quick profile, without progress bars.
BUILD_ENV := BOOK_PROFILE=quick BOOK_BUILD=1 TQDM_DISABLE=1 PYTHONWARNINGS=ignore
JB_FLAGS := --all -W -n --keep-going

.PHONY: book test setup system-deps data build unit site-tests clean

book: setup build

test: setup unit build site-tests

setup: system-deps $(VENV)/.installed data

# Debian packages: the Fashion-MNIST IDX files (offline data) and Chromium (site tests).
system-deps:
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  if ! dpkg -s dataset-fashion-mnist chromium chromium-driver >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      dataset-fashion-mnist chromium chromium-driver >/dev/null; \
	  fi; \
	else echo "no apt-get as root: Fashion-MNIST will be downloaded by torchvision; site tests need chromium"; fi

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $@

data: $(VENV)/.installed
	$(BIN)/python -m utils.data

build: $(VENV)/.installed
	$(BUILD_ENV) PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/jupyter-book build $(JB_FLAGS) .

unit: $(VENV)/.installed
	$(BIN)/python -m pytest tests/unit -q

site-tests: $(VENV)/.installed
	$(BIN)/python -m pytest tests/site -q

clean:
	rm -rf _build
