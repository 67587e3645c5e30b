# Two entry points, both idempotent: `make repro` (set up + run the pipeline),
# `make test` (set up + run the tests). Everything installs into .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.wm-installed
# CPU training: keep glibc from returning memory to the OS every step
# (~1/3 of the step time on larger models, measured on 2 cores).
export MALLOC_MMAP_MAX_ ?= 0
export MALLOC_TRIM_THRESHOLD_ ?= 100000000000
export WANDB_MODE ?= offline
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120

.PHONY: setup browser repro test test-fast bench lint clean

setup: $(STAMP)

# torch first (pinned), then the project against the full constraints file, so no
# dependency can pull a different torch build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==26.3"
	$(BIN)/python -m pip install --quiet -c constraints.txt "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	$(BIN)/dvc config --local core.analytics false 2>/dev/null || true
	touch $(STAMP)

repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# The browser test (wm play) drives Debian's chromium + chromedriver; installed here when
# missing and we are root (CI), otherwise the test says how and skips.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium + chromium-driver (apt-get) for the browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "no chromium/chromedriver and not root: the browser test will skip (apt-get install chromium chromium-driver)"; fi

test: setup browser
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

test-fast: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/hadolint docker/Dockerfile

clean:
	rm -rf $(VENV) .pytest_cache
