# Every set-up step of llmgate lives here: `make run` and `make test` work on a
# fresh machine with only Python 3.11+ and the package registries.

PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
CONFIG ?= etc/gateway.yaml
# Where tests/clients/install.sh keeps the real CLIs between runs.
CLIENTS_DIR ?= $(HOME)/.cache/llmgate/clients

.PHONY: setup run test unit-tests test-clients bench clean

setup: $(VENV)/.installed

# compat mode puts the checkout on sys.path, so Twisted's plugin scan finds
# twisted/plugins/llmgate.py (the default editable mode hides it).
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $@

run: setup
	$(BIN)/twistd --nodaemon --pidfile= llmgate --config $(CONFIG)

# The whole suite, then the real agents (docs/clients.md).
test: unit-tests test-clients

unit-tests: setup
	$(BIN)/python -m pytest -q

# Claude Code and Codex from the npm registry, at pinned versions, through a
# gateway in front of a fake provider on loopback (tests/clients/).
test-clients: setup
	bash tests/clients/install.sh $(CLIENTS_DIR)
	LLMGATE_CLIENTS_BIN=$(CLIENTS_DIR)/node_modules/.bin $(BIN)/python -m pytest -q tests/clients

bench: setup
	bash bench/run.sh

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp .pytest_cache
