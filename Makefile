# trading-monitor: every command a newcomer needs. Each target installs what it needs first.
#   make demo    run a whole simulated trading day on the embedded database and paper exchange
#   make test    run the test suite with coverage (what CI runs; installs headless Chromium when missing)
#   make chaos   seeded chaos trading days: violations per invariant (SEEDS=200)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-requirements

.PHONY: install browser demo test lint health bench chaos stream console nocodb-test db-stop exchange-stop stop clean

$(STAMP): requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install the pinned packages

demo: $(STAMP)     ## a whole simulated trading day (options: make demo ARGS="--date 2026-11-27 --seed 7")
	$(BIN)/python scripts/simulate_day.py $(ARGS)

# The console's browser test drives the distribution's headless Chromium through chromedriver.
HAVE_CHROMIUM := command -v chromedriver >/dev/null && { command -v chromium || command -v chromium-browser; } >/dev/null
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:           ## headless Chromium and chromedriver for tests/test_console_browser.py (apt, when missing)
	@$(HAVE_CHROMIUM) || { command -v apt-get >/dev/null && \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  { echo "install Chromium and its driver (Debian/Ubuntu: apt-get install -y chromium chromium-driver)"; exit 1; }

test: $(STAMP) browser  ## the test suite, with coverage of the core modules
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

health: $(STAMP)   ## the health check: one line per check, exit 0 ok / 1 warning / 2 critical
	$(BIN)/python scripts/health_check.py $(ARGS)

stream: $(STAMP)   ## the trade-updates listener: fills recorded as they happen (Ctrl-C stops; see docs/operations.md)
	$(BIN)/python trade_stream.py $(ARGS)

console: $(STAMP) ## the operator console (REST API, OpenAPI at /docs) on http://127.0.0.1:8080/ (see docs/console.md)
	$(BIN)/python -m console $(ARGS)

bench: $(STAMP)    ## print the speed figures (paper exchange, executor, monitors, console)
	$(BIN)/python scripts/benchmark_paper_exchange.py
	$(BIN)/python scripts/benchmark_executor.py
	$(BIN)/python scripts/benchmark_order_monitor.py
	$(BIN)/python scripts/benchmark_position_monitor.py
	$(BIN)/python scripts/bench_console.py

SEEDS ?= 20
chaos: $(STAMP)    ## seeded chaos trading days, every invariant checked after every run (make chaos SEEDS=200; replay one: scripts/chaos_day.py --seed S)
	$(BIN)/python scripts/chaos_day.py --seeds $(SEEDS)

NOCODB_DIR := var/nocodb
$(NOCODB_DIR)/.installed: scripts/nocodb/package.json
	@command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq nodejs npm)
	mkdir -p $(NOCODB_DIR) && cp scripts/nocodb/package.json $(NOCODB_DIR)/package.json
	cd $(NOCODB_DIR) && npm install --ignore-scripts --no-audit --no-fund
	cd $(NOCODB_DIR)/node_modules/sqlite3 && ../.bin/node-gyp rebuild $$(test -f /usr/include/node/common.gypi && echo --nodedir=/usr)
	@touch $@

nocodb-test: $(STAMP) $(NOCODB_DIR)/.installed  ## optional: the schema, roles and setup_nocodb.py against a real NocoDB 0.262.5 (~620 MB in var/nocodb)
	$(BIN)/python tests/nocodb_check.py

db-stop: $(STAMP)  ## stop the embedded PostgreSQL (data stays in var/postgres)
	$(BIN)/python -m trading.embedded_postgres stop

exchange-stop: $(STAMP)  ## stop the embedded paper exchange (state stays in var/paper_exchange)
	$(BIN)/python -m paper_exchange stop --state-dir var/paper_exchange
	$(BIN)/python -m paper_exchange stop --state-dir var/paper_exchange_test

stop: exchange-stop db-stop  ## stop every embedded service

clean:             ## remove the virtual environment and caches (keeps var/, the embedded data)
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .coverage htmlcov
