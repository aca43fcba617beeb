# pyonvm — `make demo` and `make test` work on a fresh machine: each builds the
# package into .venv first.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
NATIVE := $(wildcard src/onvm/_native/*.c src/onvm/_native/*.h)
ASAN_LIB := $(shell gcc -print-file-name=libasan.so 2>/dev/null)

.PHONY: demo demo-topology deps docs test test-fast test-sanitize lint bench clean FORCE

# Debian tools the tests drive: network namespaces, veth offloads and ping (end-to-end
# tests), tcpdump (reads what onvm capture writes), bubblewrap and podman with runc (NF isolation), headless Chromium and its
# driver (the dashboard test), and DPDK's PMDs and dpdk-testpmd (dpdk: ports and their
# peer).  Installed only when missing, and only as root; the tests that need them skip
# otherwise.
DEB_TOOLS := ip:iproute2 ethtool:ethtool ping:iputils-ping bwrap:bubblewrap podman:podman runc:runc \
	chromium:chromium chromedriver:chromium-driver pkg-config:pkgconf dpdk-devbind.py:dpdk dpdk-testpmd:dpdk-dev \
	tcpdump:tcpdump
# Headers the native build uses when they are there (the afxdp port: libxdp and libbpf;
# the dpdk port, in the optional module onvm._dpdk: DPDK 22.11, found by pkg-config).
DEB_HEADERS := xdp/xsk.h:libxdp-dev bpf/libbpf.h:libbpf-dev dpdk/rte_ethdev.h:libdpdk-dev
deps:
	@missing=""; for t in $(DEB_TOOLS); do command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	for h in $(DEB_HEADERS); do test -e /usr/include/$${h%%:*} || missing="$$missing $${h#*:}"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing$$missing"; { apt-get -o DPkg::Lock::Timeout=600 update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq $$missing >/dev/null; } || \
	  echo "could not install$$missing (the tests that need them will be skipped)"; \
	elif [ -n "$$missing" ]; then echo "missing:$$missing (the tests that need them will be skipped)"; fi

# What the native build found (optional headers): it is rebuilt when that changes, e.g.
# after make deps installed libxdp-dev or libdpdk-dev.
FEATURES := build/native-features
$(FEATURES): FORCE
	@mkdir -p build; f="afxdp:$$(test -e /usr/include/xdp/xsk.h && test -e /usr/include/bpf/libbpf.h && echo 1)"; \
	  f="$$f dpdk:$$(pkg-config --exists libdpdk 2>/dev/null && echo 1)"; \
	  [ "$$(cat $@ 2>/dev/null)" = "$$f" ] || echo "$$f" > $@
FORCE:

$(STAMP): pyproject.toml setup.py $(NATIVE) $(FEATURES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

# A topology file: a firewall chain started, supervised and stopped by 'onvm run'.
demo-topology: $(STAMP)
	mkdir -p demo-out && cd demo-out && ../$(VENV)/bin/onvm run ../examples/firewall-chain.yaml

test: deps $(STAMP) lint
	$(PY) -m pytest -q
	$(MAKE) test-sanitize

test-fast: $(STAMP)
	$(PY) -m pytest -q -x -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m mypy src/onvm

# The native core built with AddressSanitizer and UBSan, run under the native tests.
test-sanitize: $(STAMP)
	rm -rf build/asan && mkdir -p build/asan
	cp -r src/onvm build/asan/onvm && rm -f build/asan/onvm/_*.so
	ONVM_SANITIZE=1 $(PY) setup.py -q build_ext --build-lib build/asan/lib --build-temp build/asan/tmp
	cp build/asan/lib/onvm/_*.so build/asan/onvm/
	cd build/asan && LD_PRELOAD=$(ASAN_LIB) ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
	  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 PYTHONPATH=. \
	  ONVM_FUZZ_SECONDS=60 ../../$(PY) -m pytest -q -p no:cacheprovider ../../tests/native ../../tests/nfs ../../tests/fuzz \
	  ../../tests/integration/test_pipeline.py ../../tests/integration/test_lifecycle_faults.py \
	  ../../tests/integration/test_pcap_files.py ../../tests/integration/test_replay.py ../../tests/integration/test_capture.py \
	  ../../tests/integration/test_trace.py \
	  ../../tests/integration/test_packing.py \
	  ../../tests/integration/test_overload.py ../../tests/integration/test_dpdk.py ../../tests/e2e

# The command reference, made from the program's own parsers (a test checks it is current).
docs: $(STAMP)
	$(PY) -m onvm.cli.reference > docs/cli.md

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf build $(VENV) src/*.egg-info demo-out
	find src -name '*.so' -delete
