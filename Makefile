# Two entry points, both self-contained on a fresh machine:
#   make demo   set up, write the default (random-weight) checkpoint, export it to an ONNX bundle,
#               encode and rank sample pages with the torch-free runtime, index them (PNGs + a PDF)
#               and search the index
#   make test   set up, lint, run the offline CPU test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The demo exports fp32 only, to stay quick; pass DEMO_PRECISION=fp32,fp16,int8 for all three.
DEMO_PRECISION ?= fp32

.PHONY: setup demo test lint format clean qemu browser

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[export,dev,pdf,qdrant,pool,retrieval,openvino]"
	# Parity-test oracles. --no-deps: torchvision 0.28.0 is the release that pairs with torch 2.13
	# (its CUDA-only C ops are never used; see export/_compat.py), sauerkrautlm-colpali pins
	# torch<2.9 in its metadata although its processor code runs fine on 2.13, and colpali-engine
	# wants peft, which its token pooler (all the tests use) never imports.
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps torchvision sauerkrautlm-colpali colpali-engine
	touch $(STAMP)

setup: $(STAMP)

# --dpi 72 below: the sample PDF is letter size, so its pages stay one tile each (150 dpi would
# tile them 3x2 + thumbnail, ~7x the work on this CPU).
demo: $(STAMP)
	$(BIN)/python -m export --target checkpoint --model random --out build/collfm2-random --force
	$(BIN)/python -m export --target onnx --model build/collfm2-random --out build/bundle-random \
		--precision $(DEMO_PRECISION) --force
	$(BIN)/python -m export.demo --bundle build/bundle-random
	rm -rf build/index
	$(BIN)/python -m runtime index add --index build/index --bundle build/bundle-random --dpi 72 build/sample_pages
	$(BIN)/python -m runtime search --index build/index -k 5 "total amount due on the invoice"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Emulated CPU classes for tests/test_cpu_classes.py (aarch64 Cortex-A76, x86 Haswell/Nehalem):
# set up here when this is root with apt (CI is), else those tests skip and say why (CI fails).
QEMU_DIR := build/qemu
$(QEMU_DIR)/.ready: jetson/qemu_setup.sh jetson/qemu_run.sh constraints.txt pyproject.toml
	PYTHON=$(BIN)/python jetson/qemu_setup.sh $(QEMU_DIR)

qemu: $(STAMP)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		$(MAKE) --no-print-directory $(QEMU_DIR)/.ready; \
	else echo "note: not root with apt: the emulated-CPU tests will skip (sudo jetson/qemu_setup.sh $(QEMU_DIR))"; fi

# The web page's test drives Debian's chromium through chromedriver (tests/test_serve_browser.py):
# installed here when this is root with apt (CI is), else that test skips and says why (CI fails).
browser: $(STAMP)
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	else echo "note: not root with apt: the browser test will skip (apt-get install chromium chromium-driver)"; fi

test: lint qemu browser
	# pytest exits 5 when it collects nothing: that is a broken suite, not a pass.
	COLLFM2_QEMU_DIR=$(QEMU_DIR) $(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache
