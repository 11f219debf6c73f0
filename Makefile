# `make demo` and `make test` each set everything up from a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install bench clean

# Debian packages the project needs: bubblewrap (the sandbox's isolation) and postgresql
# (the tests run the database tests on a real server, started on loopback for the run).
# Installed when missing and running as root (as CI does); otherwise the message says
# what to install.
DEBS := bubblewrap postgresql
# torch for the embedding model, put in before the package so that nothing asks for
# another build: 2.13.0 is the CPU build this kind of machine keeps on disk (pip's
# find-links); elsewhere, set TORCH, e.g. to a CPU wheel's URL
TORCH ?= torch==2.13.0

$(STAMP): pyproject.toml
	@{ command -v bwrap && ls /usr/lib/postgresql/*/bin/initdb; } >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBS) >/dev/null; \
	  else echo "install the Debian package(s): $(DEBS)"; fi; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q '$(TORCH)'
	$(BIN)/pip install -q -e '.[test,embeddings]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/aios demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/aios bench kernel --json

clean:
	rm -rf $(VENV) build *.egg-info
