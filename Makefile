# Two commands on a fresh machine with Python 3.11:  make demo   and   make test
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RECIPE ?= r4-joint

.PHONY: install browser demo lint test test-fast lock base-model notebooks clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

## browser: Debian's chromium for the report's browser test (tests/test_report.py), installed with
## apt-get when it is missing and apt-get is there (as root, else through sudo)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; } || \
	  echo "chromium is missing and could not be installed with apt-get: the browser tests will fail"

## demo: train and evaluate $(RECIPE) on the embedded default and print the results table
demo: install
	$(PY) scripts/train_recipe.py --recipe $(RECIPE)

## lint: ruff (pyproject.toml [tool.ruff]: pyflakes, bugbear, import order, at most 6 parameters)
lint: install
	$(PY) -m ruff check .

## test: lint, then the whole suite (unit tests, end-to-end recipe runs on the tiny default, the report's browser test)
test: lint browser
	VLM_RECIPES_REQUIRE_BROWSER=1 $(PY) -m pytest -q --durations=10

test-fast: lint
	$(PY) -m pytest -q -m "not slow"

## lock: rewrite environment.lock.yml from the installed environment
lock: install
	$(PY) scripts/write_lock.py

## base-model: rebuild the shipped tiny base checkpoint (deterministic; ~20 min on 2 cores)
base-model: install
	$(PY) scripts/build_base_model.py

clean:
	rm -rf runs .pytest_cache
