# Every step a fresh machine needs is here: `make test` and `make demo` work on a clean clone.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup test lint typecheck unit browser demo clean sam-setup build package bench

setup: $(STAMP)

$(STAMP): requirements/dev.txt layers/signing/requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/cfn-lint template.yaml

typecheck: setup
	$(BIN)/mypy

# pytest-xdist: one worker per core (test files kept whole on one worker, so a module's fixtures
# are built once); PYTEST_WORKERS=0 runs everything in this process.
PYTEST_WORKERS ?= auto

unit: setup browser
	$(BIN)/pytest -q --numprocesses $(PYTEST_WORKERS) --dist loadfile

# Debian's chromium for the browser test (tests/e2e/test_browser.py), where apt can install it;
# never fails: without chromium that one test skips and says why.
browser:
	@sh devtools/install_browser.sh

test: lint typecheck unit

demo: setup
	$(BIN)/appauth demo

# The README's performance figures, each beside its reference measured in the same run on this
# machine: one table printed, the JSON in bench/results/. BENCH_ARGS=--quick: the same rows, small
# (under a minute); the full run takes about 15 minutes on 2 cores. The official Alipay SDK it
# compares with is bench-only (requirements/bench.txt): it adds packages to .venv and changes
# none of requirements/dev.txt's pins (pip check).
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) requirements/bench.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/bench.txt
	$(BIN)/python -m pip check
	@touch $@

bench: $(BENCH_STAMP)
	BENCH_PYTHON=$(BIN)/python sh bench/run.sh $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(SAM_VENV) .aws-sam .mypy_cache .pytest_cache .ruff_cache .hypothesis

# ---------------------------------------------------------------- Lambda build
# The SAM CLI in its own venv (its pins clash with the dev tools'), from requirements/sam.txt.
SAM_VENV  := .venv-sam
SAM       := $(SAM_VENV)/bin/sam
SAM_STAMP := $(SAM_VENV)/.installed
# No telemetry; the layer's and functions' recipes use the pinned pip of the SAM venv.
SAM_ENV   := SAM_CLI_TELEMETRY=0 PIP="$(abspath $(SAM_VENV))/bin/python -m pip"
# `sam build` expands Fn::ForEach locally (--language-extensions) and so needs a value for the
# one parameter without a default. The built template keeps the Fn::ForEach: deploy asks for
# the real caller roles.
BUILD_PARAMETERS := TokenQueryCallerArns=arn:aws:iam::123456789012:role/build-placeholder

sam-setup: $(SAM_STAMP)

$(SAM_STAMP): requirements/sam.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/sam.txt
	@touch $@

# For python3.12 on arm64 without python3.12 or Docker: see layers/signing/Makefile.
build: $(SAM_STAMP)
	$(SAM_ENV) $(SAM) validate --lint
	$(SAM_ENV) $(SAM) build --language-extensions --parameter-overrides $(BUILD_PARAMETERS)

# The build, then its check: platforms, sizes, nothing developer-only (appauth_dev.package_check).
package: setup build
	$(BIN)/python -m appauth_dev.package_check .aws-sam/build

# `sam build` runs these for the functions (template.yaml: BuildMethod makefile, ContextPath .)
# in a copy of the function's folder: its files (not requirements.txt, no __pycache__), and what
# its requirements.txt lists, if anything (callback: segno), for the Lambda runtime like the layer.
include $(dir $(lastword $(MAKEFILE_LIST)))layers/signing/Makefile

.PHONY: build-CallbackFunction build-RefreshFunction build-TokenQueryFunction

build-CallbackFunction build-RefreshFunction build-TokenQueryFunction:
	@test -n "$(ARTIFACTS_DIR)" || { echo "ARTIFACTS_DIR is not set: run 'sam build' (or 'make package')"; exit 1; }
	cp -R . "$(ARTIFACTS_DIR)/"
	cd "$(ARTIFACTS_DIR)" && rm -f requirements.txt && find . -depth -name __pycache__ -type d -exec rm -rf {} +
	if grep -Eq '^[[:space:]]*[^#[:space:]]' requirements.txt 2>/dev/null; then \
		$(LAMBDA_PIP_INSTALL) --target "$(ARTIFACTS_DIR)" -r requirements.txt; \
	fi
	cd "$(ARTIFACTS_DIR)" && rm -rf $(PIP_SCHEME_DIRS)
	@$(call LAMBDA_COMPILE,"$(ARTIFACTS_DIR)")
