# Every entry point a developer or CI uses. `make help` lists them.
# On a fresh Debian machine, as root, `make demo` and `make test` install what they need:
# Debian packages (only those missing), a virtualenv in .venv, the compiled extension.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# The extension links OpenSSL >= 3.5: on Debian 12, Debian 13's static libraries, which
# setup.py fetches once (ext/openssl/fetch.sh: apt-get download, dpkg-deb) and links with
# zlib and zstd statically (zlib1g-dev, libzstd-dev); pkg-config finds a system one.
# systemd: systemd-analyze, which checks contrib/systemd without a running systemd.
# strace: the lean data path tests count a worker's syscalls (tests/integration/test_lean_reads.py).
DEB_PACKAGES := python3 python3-venv python3-dev gcc make libssl-dev liburing-dev openssl iproute2 procps strace \
	curl nginx-light mosquitto mosquitto-clients nftables iputils-ping util-linux mount \
	pkg-config zlib1g-dev libzstd-dev debian-archive-keyring systemd haproxy
# Named after the list, so that a package added to it is installed on machines already set
# up (order-only below: a new stamp does not reinstall the virtualenv).
DEB_STAMP := .stamp-deb-$(shell echo $(DEB_PACKAGES) | md5sum | cut -c1-8)
EXT_SOURCES := $(wildcard ext/*.pyx ext/*.pxd ext/*/*.pxi ext/*/*.pxd ext/includes/*.h \
	ext/openssl/*) setup.py
PYTEST_ARGS ?=

DIST_DIR ?= dist

.PHONY: help demo test test-uring lint build bench deps clean fmt test-ktls dist

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

demo: build  ## install, build, and run the relay on its embedded default (Ctrl-C stops)
	$(BIN)/relaycore demo $(DEMO_ARGS)

test: build  ## install, build, and run every test tier
	$(PY) -m pytest tests $(PYTEST_ARGS)

# The data-path tiers again with every relay on the experimental io_uring loop ([relay]
# io = "io_uring", tests/conftest.py's --io): kTLS tests and those that count the epoll
# loop's own syscalls (marked epoll_only) are skipped. Not in `make test` or CI yet.
test-uring: build  ## the ext, integration and e2e tiers with io = "io_uring"
	$(PY) -m pytest --io=io_uring tests/ext tests/integration tests/e2e $(PYTEST_ARGS)

lint: build  ## ruff, ruff format --check, mypy --strict, stubtest, cython-lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(PY) -m mypy.stubtest relaycore._core --allowlist ext/stubtest-allowlist.txt
	PATH=$(BIN):$$PATH $(BIN)/cython-lint --max-line-length 100 ext/

fmt: $(VENV)/.installed  ## reformat the Python sources
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

build: relaycore/.built  ## compile relaycore._core in place

bench: build  ## pytest-benchmark runs: relay vs direct, copy vs splice (loopback only)
	$(PY) -m pytest bench --benchmark-only --benchmark-columns=median,ops,rounds --timeout=0 $(PYTEST_ARGS)

deps: $(VENV)/.installed  ## Debian packages and the virtualenv only

# The wheel holds the compiled extension: `pip install` of it needs no compiler. Built with
# the virtualenv's setuptools and Cython (no isolated build env to download), into DIST_DIR.
dist: $(VENV)/.installed  ## build the wheel into dist/ (python -m build; compiled extension inside)
	$(PY) -m build --wheel --no-isolation --outdir $(DIST_DIR) .

# --force: a change of setup.py or of the OpenSSL found must relink even if no C changed.
relaycore/.built: $(VENV)/.installed $(EXT_SOURCES)
	$(PY) setup.py -q build_ext --inplace --force -j 2
	@touch $@

$(VENV)/.installed: pyproject.toml | $(DEB_STAMP)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "Cython>=3.0,<4" "setuptools>=68" wheel
	$(PY) -m pip install -q --no-build-isolation -e ".[test,dev]"
	@touch $@

# Debian packages: install only what is missing, so a prepared machine does no apt work.
$(DEB_STAMP):
	@missing=$$(for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@touch $@

clean:  ## remove build products (keeps .venv)
	rm -rf build dist relaycore/.built relaycore/_core*.so ext/_core.c

# kTLS tests need a kernel with the tls module: tests/ktls/guest.sh runs them in a throw-away
# QEMU guest booting Debian's stock kernel (root; the first run installs qemu with apt-get and
# caches the kernel in /var/cache/relaycore-ktls; KTLS_VM_KERNEL and KTLS_VM_SUITE pick
# another kernel package). RELAYCORE_KTLS_REQUIRED=1 turns a "kTLS unavailable" skip into a
# failure in there. Two kernels, one guest each (about a minute plus the boot): Debian 12's
# 6.1, which cannot rekey (TLS 1.3 stays in user space), and trixie-backports' 7.3, which can
# (TLS 1.3 offloaded across KeyUpdates). KTLS_SUITES picks ("default": the machine's own
# sources); KTLS_VM_SUITE=S alone runs only S, as before.
KTLS_VM ?= tests/ktls/guest.sh
KTLS_VM_TIMEOUT ?= 900
KTLS_SUITES ?= $(if $(KTLS_VM_SUITE),$(KTLS_VM_SUITE),default trixie-backports)

test-ktls: build build/tlspeer  ## kernel TLS tests (tests/ktls, -m ktls) in QEMU guests: kernels 6.1 and 7.3
	@failed=''; for suite in $(KTLS_SUITES); do \
		echo "test-ktls: the kernel of $$suite"; \
		rc=0; KTLS_VM_SUITE=$$(test "$$suite" = default || echo "$$suite") \
		KTLS_VM_TIMEOUT=$(KTLS_VM_TIMEOUT) RELAYCORE_KTLS_REQUIRED=1 \
			$(KTLS_VM) $(PY) -m pytest -q -p no:cacheprovider -m ktls tests/ktls $(PYTEST_ARGS) \
			|| rc=$$?; \
		case $$rc in \
			0) ;; \
			124) echo "test-ktls ($$suite): FAILED: the VM ran out of KTLS_VM_TIMEOUT=$(KTLS_VM_TIMEOUT) s" >&2 ;; \
			125) echo "test-ktls ($$suite): FAILED: the VM never ran the tests (exit 125; its console is above)" >&2 ;; \
			*) echo "test-ktls ($$suite): FAILED: pytest exited with $$rc" >&2 ;; \
		esac; \
		test $$rc = 0 || failed="$$failed $$suite"; \
	done; \
	test -z "$$failed" || { echo "test-ktls: FAILED on:$$failed" >&2; exit 1; }

# A TLS peer on the extension's own OpenSSL (hybrid groups, KeyUpdates), for the tests; built
# here so that the kTLS guest does not compile it.
build/tlspeer: tests/support/tlspeer.c tests/support/tlspeer.py ext/openssl/locate.py $(VENV)/.installed
	$(PY) tests/support/tlspeer.py

# relaycore beside stunnel, HAProxy, nginx (stream) and socat: installs the missing Debian
# packages (bench/peers/deps.sh), then bench/peers/run.py (about 10 minutes; loopback only).
# Results: bench/results/peers-YYYY-MM-DD.{md,json}. Not part of `make test` or CI.
.PHONY: bench-peers
bench-peers: build  ## relaycore vs stunnel, HAProxy, nginx, socat (installs them; ~10 min)
	sh bench/peers/deps.sh
	$(PY) bench/peers/run.py $(BENCH_PEERS_ARGS)

# 50,000 concurrent idle TLS device connections, 1,000 of them busy, through 8 workers
# (bench/peers/scale.py: open time, PSS per connection, ping latency of the idle ones,
# memory given back once they close). About 4 minutes on a quiet 2-core machine; loopback
# only. Figures: bench/results/scale-YYYY-MM-DD.json. Not part of `make test` or CI
# (tests/e2e/test_scale.py runs 5,000).
BENCH_SCALE_ARGS ?= --json bench/results/scale-$(shell date +%F).json
.PHONY: bench-scale
bench-scale: build  ## 50,000 idle TLS device connections: memory, open time, ping p99 (~4 min)
	$(PY) bench/peers/scale.py $(BENCH_SCALE_ARGS)

# 10 minutes of mixed traffic (churn, echo, bulk; plain and TLS) with a reload every 30 s
# and a worker SIGKILL every 60 s, every byte compared (bench/soak.py, docs/OPERATIONS.md).
# Exits 1 if a failure is not explained by a kill, a byte is corrupted, memory grows or fds
# leak. SOAK_ARGS="--duration 90" for a short run. Not part of `make test` or CI
# (tests/e2e/test_soak.py runs 10 s).
SOAK_ARGS ?= --json bench/results/soak-$(shell date +%F).json
.PHONY: soak
soak: build  ## 10 min of traffic with reloads and worker kills; every byte checked
	$(PY) bench/soak.py $(SOAK_ARGS)
