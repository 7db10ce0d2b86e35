# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench venv browser clean compose-env

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/crmsync demo

# docker compose's .env (0600): fresh secrets; docker-compose.yml refuses to start without it
compose-env: $(STAMP)
	$(BIN)/crmsync compose-env

# headless Chromium + chromedriver for the dashboard tests (tests/dashboard), from Debian; idempotent
browser:
	@if ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver; \
	fi

# the suite runs in TEST_WORKERS processes (pytest-xdist; each has its own embedded broker and PostgreSQL, and
# most tests wait on services more than they compute): TEST_WORKERS=0 runs it in this process alone. The
# fault and chaos tests (marker `alone`: they kill processes and servers on timing) run after it, one at a time
TEST_WORKERS ?= 2

test: $(STAMP) browser
	$(BIN)/python -m pytest -q --durations=20 -n $(TEST_WORKERS) --dist worksteal -m "not alone" $(PYTEST_ARGS)
	$(BIN)/python -m pytest -q --durations=5 -m alone $(PYTEST_ARGS) || [ $$? -eq 5 ]  # (5: PYTEST_ARGS chose none of them)

bench: $(STAMP)
	$(BIN)/python bench/capture.py
	$(BIN)/python bench/salesforce.py
	$(BIN)/python bench/campaign_writer.py
	$(BIN)/python bench/sync.py
	$(BIN)/python bench/cdc.py
	$(BIN)/python bench/crms.py
	$(BIN)/python bench/chaos.py
	# the suite's fault run (a broker that loses its memory, PostgreSQL crashing), seed after seed
	$(BIN)/python bench/chaos.py --disasters --records 300 --seconds 45 --rate 6 --kill-every 5 --seeds 1 2 3 4 5

clean:
	-$(BIN)/crmsync infra down
	rm -rf .crmsync
