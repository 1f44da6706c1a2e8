# testlab: `make demo` runs the example jobs on the embedded default (SQLite + local sandbox VMs);
# `make test` runs the whole test suite (SQLite and a real PostgreSQL the tests start themselves).
# Both install what they need first and are safe to run again.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SYSTEM_PACKAGES := libvirt-dev pkg-config postgresql gcc \
	libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils \
	mmdebstrap e2fsprogs chromium fonts-dejavu-core
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench setup system-packages clean

demo: setup
	$(BIN)/testlab demo

test: setup
	$(BIN)/pytest -q -p no:cacheprovider

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check testlab tests bench
	$(BIN)/ruff format --check testlab tests bench

bench: setup
	for script in bench/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

setup: system-packages $(STAMP)

# Installs the system packages that are missing (Debian/Ubuntu), as root or through sudo.
system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		sudo_cmd=""; [ "$$(id -u)" -eq 0 ] || sudo_cmd="sudo"; \
		$$sudo_cmd apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$sudo_cmd apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,libvirt]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) .testlab .pytest_cache .ruff_cache .hypothesis
