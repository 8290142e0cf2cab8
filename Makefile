# The two commands of the README: `make serve` and `make test`. Everything else is set up by them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: serve test setup setup-test models bench clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "diarflow needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,ray]'
	touch $(VENV)/.installed $@

setup: $(VENV)/.installed models
setup-test: $(VENV)/.installed-test models
	@# the page test drives a headless Chromium: install Debian's package once, only if it is missing
	@test -x /usr/bin/chromium || { apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

models: | $(BIN)/python
	$(BIN)/diarflow models install

serve: setup
	$(BIN)/diarflow serve --host $(HOST) --port $(PORT)

test: setup-test
	$(BIN)/python -m mypy dataflow operators diarflow/models
	$(BIN)/python -m pytest -q

bench: setup-test
	$(BIN)/python -m tools.bench_embeddings
	$(BIN)/python -m tools.bench_diarization
	$(BIN)/python -m tools.bench_stream_compute

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .hypothesis *.egg-info
