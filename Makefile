# The two commands of the README: `make serve` and `make test`. Everything else is set up by them.
# Also: `make notebooks` (JupyterLab on 127.0.0.1), `make bench`, `make dist` (wheel and sdist in dist/).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
NOTEBOOK_PORT ?= 8888

.PHONY: serve test setup setup-test models bench notebooks dist clean

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

$(VENV)/.installed-notebooks: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[notebooks]'
	touch $(VENV)/.installed $@

setup: $(VENV)/.installed models
setup-test: $(VENV)/.installed-test models
	@# the page test drives a headless Chromium: install Debian's package once, only if it is missing.
	@# That needs root; elsewhere the page tests skip with the reason, except under CI=true, where they fail.
	@test -x /usr/bin/chromium || { apt-get update -qq >/dev/null 2>&1 && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; } || \
		{ test "$$CI" != true && echo "note: could not install chromium (needs root): the page tests will be skipped"; }

models: | $(BIN)/python
	$(BIN)/diarflow models install

serve: setup
	$(BIN)/diarflow serve --host $(HOST) --port $(PORT)

test: setup-test
	$(BIN)/python -m mypy dataflow operators diarflow/provisioning diarflow/testing diarflow/resources.py servers
	$(BIN)/python -m pytest -q

notebooks: $(VENV)/.installed-notebooks models
	@# JupyterLab refuses to run as root unless told; containers and CI machines often are root
	$(BIN)/python -m jupyter lab --ip=127.0.0.1 --port=$(NOTEBOOK_PORT) --notebook-dir=notebooks --no-browser \
		$(if $(filter 0,$(shell id -u)),--allow-root)

dist: $(VENV)/.installed-test
	$(BIN)/python -m build --sdist --wheel --outdir dist .

bench: setup-test
	$(BIN)/python -m tools.bench_embeddings
	$(BIN)/python -m tools.bench_diarization
	$(BIN)/python -m tools.bench_excerpts
	$(BIN)/python -m tools.bench_channels
	$(BIN)/python -m tools.bench_stream_compute

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .hypothesis *.egg-info build dist
