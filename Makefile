# The two commands a newcomer needs: `make demo` (the whole pipeline here) and `make test`.
# Each sets up .venv itself: Python >= 3.10 is all a fresh machine needs.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.streamcap-dev-installed
PYTEST_ARGS ?=

export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE ?= disabled

.PHONY: test demo docs venv clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## test: install everything into .venv (once) and run unit, integration and e2e tests
test: $(STAMP)
	$(BIN)/python -m pytest --durations=15 $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)

## demo: the whole pipeline on this machine (embedded Redis, local image host, ~5 minutes)
demo: $(STAMP)
	$(BIN)/streamcap demo $(DEMO_ARGS)

## docs: regenerate docs/settings.md from the settings classes (a unit test fails when it is stale)
docs: $(STAMP)
	$(BIN)/python -m streamcap.common.settings_doc > docs/settings.md.tmp
	mv docs/settings.md.tmp docs/settings.md
