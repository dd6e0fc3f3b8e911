# relaygate — one command per habit. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint fmt bench services clean mutation

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/relaygate serve $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src

fmt: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

# Start the PostgreSQL and Redis this machine provides, when they are not running.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || \
	  pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start 2>/dev/null || true
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || \
	  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null 2>&1 || true

test: $(STAMP) services lint
	$(BIN)/pytest

# Missing load tools stop the bench with the apt-get command to run; INSTALL=1 runs it (as root).
bench: $(STAMP)
	$(BIN)/python bench/run.py $(if $(INSTALL),--install)

# Mutation testing of the modules that guard users (slow, not part of `make test`; see
# docs/testing.md). The modules and tests are in pyproject.toml, [tool.mutmut].
MUTATION_JOBS ?= 1
mutation: $(STAMP) services
	@$(BIN)/python -c "import mutmut" 2>/dev/null || $(BIN)/pip install --quiet 'mutmut>=3.8,<4'
	env -u PYTHONPATH $(BIN)/mutmut run --max-children $(MUTATION_JOBS)
	env -u PYTHONPATH $(BIN)/mutmut results

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
