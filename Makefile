# Every set-up step of llmgate lives here: `make run` and `make test` work on a
# fresh machine with only Python 3.11+ and the package registries.

PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
CONFIG ?= etc/gateway.yaml
# Where tests/clients/install.sh keeps the real CLIs between runs.
CLIENTS_DIR ?= $(HOME)/.cache/llmgate/clients

# setup.cfg's python_requires, as a check an interpreter runs on itself.
NEW_ENOUGH = import sys; sys.exit(sys.version_info < (3, 11))

# A virtualenv whose Python is missing or too old (left by a setup that ran
# with an old python3) is removed here, so this run builds it anew instead
# of reusing it.
VENV_STALE := $(shell [ -e $(VENV) ] && ! $(BIN)/python -c '$(NEW_ENOUGH)' >/dev/null 2>&1 && echo stale)
ifneq ($(VENV_STALE),)
$(info $(VENV): its Python is missing or older than 3.11; rebuilding it)
$(shell rm -rf $(VENV))
endif

.PHONY: setup run test unit-tests test-clients bench clean

# The development install: llmgate editable, with the test extras.
setup: $(VENV)/.installed-test

$(VENV)/.created:
	@$(PYTHON) -c '$(NEW_ENOUGH)' 2>/dev/null || { \
	  echo "llmgate needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) -V 2>&1)." \
	       "Name another: make PYTHON=python3.11 ..." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	touch $@

# setup.cfg maps the packages onto the checkout itself (package_dir '' is
# '.'), so the editable install is one .pth naming the checkout, and
# Twisted's plugin scan finds twisted/plugins/llmgate.py through sys.path.
$(VENV)/.installed: $(VENV)/.created setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e .
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# A run needs the package only, not the test extras.
run: $(VENV)/.installed
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
	rm -rf $(VENV) build *.egg-info _trial_temp .pytest_cache .hypothesis tests.test_*
