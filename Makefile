# relaygate — one command per habit. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint fmt bench soak services clean mutation ui web-deps web-test browser

# The web UI (web/, TypeScript): built into the package (src/relaygate/ui/site), which is
# committed, so an installed relaygate serves it without Node. Rebuilt here when a source
# is newer than the build; without Node the committed build is served as it is.
WEB_SOURCES := $(shell find web/src web/public -type f 2>/dev/null) web/index.html web/package.json \
               web/package-lock.json web/vite.config.ts web/tsconfig.json
UI_BUILD    := src/relaygate/ui/site/index.html
WEB_DEPS    := web/node_modules/.package-lock.json
SCREENSHOTS := build/screenshots
# The suite's files shared among one pytest process per core, at most four (pytest-xdist;
# a file's tests stay together, so a module's gateway fixture starts once).
# PYTEST_PARALLEL= (empty) runs them in one process.
PYTEST_PARALLEL ?= --numprocesses=auto --maxprocesses=4 --dist=loadfile

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP) $(UI_BUILD)
	$(BIN)/relaygate serve $(ARGS)

$(WEB_DEPS): web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error

web-deps: $(WEB_DEPS)

$(UI_BUILD): $(WEB_SOURCES)
	@if command -v npm >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory web-deps && cd web && npm run --silent build; \
	else \
	  echo "web/ is newer than the built UI, but Node is not installed: serving the committed build"; \
	fi

ui: $(UI_BUILD)

# Debian's Chromium for the end-to-end tests (Playwright's own browser download does not work here).
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

web-test: $(WEB_DEPS)
	cd web && npx vitest run

lint: $(STAMP) $(WEB_DEPS)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src
	cd web && npx tsc --noEmit && npx eslint --max-warnings 0 src e2e && \
	  npx prettier --check --log-level warn src e2e

fmt: $(STAMP) $(WEB_DEPS)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench
	cd web && npx prettier --write --log-level warn src e2e

# Start the PostgreSQL and Redis this machine provides, when they are not running.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || \
	  pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start 2>/dev/null || true
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || \
	  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null 2>&1 || true

# The browser tests (tests/e2e) fail rather than skip here: REQUIRE_E2E=1.
test: $(STAMP) services lint web-test browser $(UI_BUILD)
	rm -rf $(SCREENSHOTS)
	REQUIRE_E2E=1 $(BIN)/pytest $(PYTEST_PARALLEL)
	@echo "Screenshots of the web UI (desktop and phone): $(SCREENSHOTS)/"

# Missing load tools stop the bench with the apt-get command to run; INSTALL=1 runs it (as root).
bench: $(STAMP)
	$(BIN)/python bench/run.py $(if $(INSTALL),--install)

# Soak (outside CI): two replicas on PostgreSQL + Redis for MINUTES (default 30), a burst at
# ten times the load, recovery; plots and verdicts in bench/soak/ and bench/RESULTS.md.
# matplotlib (the `bench` extra) draws the plots. Needs `make services` (PostgreSQL, Redis).
soak: $(STAMP) services
	@$(BIN)/python -c "import matplotlib" 2>/dev/null || $(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/soak.py $(if $(MINUTES),--minutes $(MINUTES))

# Mutation testing of the modules that guard users (slow, not part of `make test`; see
# docs/testing.md). The modules and tests are in pyproject.toml, [tool.mutmut].
MUTATION_JOBS ?= 1
mutation: $(STAMP) services
	@$(BIN)/python -c "import mutmut" 2>/dev/null || $(BIN)/pip install --quiet 'mutmut>=3.8,<4'
	env -u PYTHONPATH $(BIN)/mutmut run --max-children $(MUTATION_JOBS)
	env -u PYTHONPATH $(BIN)/mutmut results

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache web/node_modules
