# The two commands a new user needs:  make demo  (run the main job)  and  make test  (run the tests).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_PORT ?= 8765

.PHONY: install demo demo-cli stop test test-quick lint bench check-java clean-runs help

help:
	@echo "make demo      install if needed, start the demo API and Airflow, trigger a run, wait at the review gate"
	@echo "make stop      stop what make demo started"
	@echo "make demo-cli  the same pipeline without Airflow (CLI), prints the report path"
	@echo "make test       install if needed, ruff checks, then every test (<= 20 min)"
	@echo "make test-quick install if needed, ruff checks, then the pure unit tests (<= 3 min)"
	@echo "make lint       ruff lint and format checks"
	@echo "make bench   run the benchmarks under bench/"

check-java:
	@scripts/check_java.sh

$(STAMP): requirements.txt pyproject.toml scripts/install.sh
	@PYTHON=$(PYTHON) scripts/install.sh
	@touch $(STAMP)

install: check-java $(STAMP)

demo: install
	@DEMO_PORT=$(DEMO_PORT) scripts/demo.sh

stop:
	@scripts/stop.sh

demo-cli: install
	@scripts/demo_cli.sh

test: install
	@scripts/test.sh

test-quick: install
	@scripts/test.sh --quick

lint: install
	@scripts/lint.sh

bench: install
	$(BIN)/python bench/native_scale.py
	$(BIN)/python bench/airflow_overhead.py

clean-runs:
	rm -rf runs reports
