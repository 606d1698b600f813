# The two commands a newcomer needs: `make demo` (the whole pipeline here) and `make test`.
# Each sets up .venv itself: Python >= 3.10 is all a fresh machine needs.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.streamcap-dev-installed
PYTEST_ARGS ?=
# Tests run on every core, at most 4 (each worker starts its own Redis and S3 server when a test
# asks for one); TEST_WORKERS=0 runs them in this one process.
TEST_WORKERS ?= auto

export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE ?= disabled

.PHONY: test test-busy lint format demo docs compose-check venv clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## test: install everything into .venv (once), lint, and run unit, integration and e2e tests
test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --maxprocesses=4 --dist worksteal --durations=15 $(PYTEST_ARGS)

## test-busy: `make test` beside six `yes > /dev/null` loops, as on a shared CI box (BUSY_LOOPS=N, RUNS=N in a row)
test-busy: $(STAMP)
	scripts/test_beside_busy_loops.sh

## lint: ruff's checks and its format check (`make format` rewrites the files)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean-venv:
	rm -rf $(VENV)

## demo: the whole pipeline on this machine (embedded Redis, local image host, ~5 minutes)
demo: $(STAMP)
	$(BIN)/streamcap demo $(DEMO_ARGS)

## compose-check: the CPU compose stack for real, fresh volumes to an evaluated checkpoint (needs Docker)
compose-check: $(STAMP)
	scripts/compose_check.sh

## docs: regenerate docs/settings.md from the settings classes (a unit test fails when it is stale)
docs: $(STAMP)
	$(BIN)/python -m streamcap.settings_doc > docs/settings.md.tmp
	mv docs/settings.md.tmp docs/settings.md
