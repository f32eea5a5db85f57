# The two commands a newcomer needs: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test unit integration bench bench-quick demo system-deps clean lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

system-deps:
	bash scripts/bootstrap-system.sh

run: $(STAMP)
	mkdir -p var
	$(BIN)/mta-engine serve $(if $(CONFIG),--config $(CONFIG),)

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q tests

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP) system-deps
	$(BIN)/python -m pytest -q tests/integration

demo: $(STAMP) system-deps
	$(BIN)/python -m bench.demo

bench: $(STAMP) system-deps
	$(BIN)/python -m bench.run $(BENCH_ARGS)

bench-quick: $(STAMP) system-deps
	$(BIN)/python -m bench.run --quick $(BENCH_ARGS)

clean:
	rm -rf var .pytest_cache
