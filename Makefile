# pyonvm — `make demo` and `make test` work on a fresh machine: each builds the
# package into .venv first.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
NATIVE := $(wildcard src/onvm/_native/*.c src/onvm/_native/*.h)
ASAN_LIB := $(shell gcc -print-file-name=libasan.so 2>/dev/null)

.PHONY: demo deps test test-fast test-sanitize lint bench clean

$(STAMP): pyproject.toml setup.py $(NATIVE)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

# Debian packages the tests need: headless Chromium and its driver for the dashboard test.
deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update && apt-get install -y chromium chromium-driver; }

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
	cp -r src/onvm build/asan/onvm && rm -f build/asan/onvm/_native*.so
	ONVM_SANITIZE=1 $(PY) setup.py -q build_ext --build-lib build/asan/lib --build-temp build/asan/tmp
	cp build/asan/lib/onvm/_native*.so build/asan/onvm/
	cd build/asan && LD_PRELOAD=$(ASAN_LIB) ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
	  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 PYTHONPATH=. \
	  ../../$(PY) -m pytest -q -p no:cacheprovider ../../tests/native ../../tests/integration/test_pipeline.py

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf build $(VENV) src/*.egg-info demo-out
	find src -name '*.so' -delete
