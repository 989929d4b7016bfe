# Two commands: `make run` (the service) and `make test` (everything CI checks).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-reliability test-docker lint typecheck clean redis-server systemd-analyze \
	postgresql mariadb chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Tests and `make run` need redis-server; the failover test needs redis-sentinel and the
# TLS test openssl (its test CA). Install Debian's packages for whichever is missing.
REDIS_PACKAGES = redis-server redis-sentinel openssl
redis-server:
	@missing=""; for p in $(REDIS_PACKAGES); do \
	  command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	[ -z "$$missing" ] || { \
	  echo "installing$$missing (Debian packages)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; }

# tests/test_packaging.py checks contrib/systemd/ with systemd-analyze (Debian's systemd).
systemd-analyze:
	@command -v systemd-analyze >/dev/null 2>&1 || { \
	  echo "installing systemd (Debian package, for systemd-analyze)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null; }

# The central store's tests start a PostgreSQL of their own (initdb + pg_ctl, never the
# machine's 5432): Debian's `postgresql` package, whose binaries live in
# /usr/lib/postgresql/<version>/bin, off the PATH.
postgresql:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing postgresql (Debian package)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

# The VICIdial sync's tests start a MariaDB of their own (mariadb-install-db + mariadbd on a
# private port and socket, never the machine's 3306): Debian's `mariadb-server` package.
mariadb:
	@{ command -v mariadbd || ls /usr/sbin/mariadbd; } >/dev/null 2>&1 && \
	  { command -v mariadb-install-db || ls /usr/bin/mariadb-install-db; } >/dev/null 2>&1 || { \
	  echo "installing mariadb-server (Debian package)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null; }


# The console's browser test (tests/console/test_browser.py) drives Debian's headless
# `chromium` through Playwright (the Python package brings its driver; no browser is
# downloaded). Where it cannot be installed (no root, no package), the test says so in one
# line and is skipped.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (Debian package, for the console's browser test)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "chromium could not be installed: the console's browser test will be skipped"; }

test: $(STAMP) redis-server systemd-analyze postgresql mariadb chromium
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest

# The long reliability runs (docs/reliability.md; not in CI, about two hours on 2 cores):
# each fuzz target under atheris for DIALGUARD_FUZZ_SECONDS (600), the floods, Redis
# limits and the 10 M import at full size, then the 30-minute soak at 1,000 decisions/s
# (SOAK_MINUTES), which redraws docs/soak.png. Run it on a quiet machine.
SOAK_MINUTES ?= 30
test-reliability: $(STAMP) redis-server
	$(BIN)/pytest tests/reliability -m long -s -p no:cacheprovider
	$(BIN)/python bench/soak.py --minutes $(SOAK_MINUTES) --rate 1000

# The Dockerfile and docker-compose.yml built and run on a private Docker daemon (root;
# installs Debian's docker.io, docker-compose and debootstrap when missing; prints one
# SKIPPED line where no daemon can be started). CI runs it after `make test`.
test-docker: $(STAMP)
	$(BIN)/python -m tests.docker.run

run: $(STAMP) redis-server
	$(BIN)/python scripts/run.py

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
