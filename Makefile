# Orchard — the two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CONFIG := deploy/config.yaml
SERVICES := push enrollment vpp roster directory
export AMQP_URI ?= amqp://guest:guest@localhost:5672/

.PHONY: run test install broker demo clean-var

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip "setuptools<82" wheel

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

broker:
	@bash deploy/ensure-broker.sh

## Start all five services (each its own process) against deploy/config.yaml.
run: install broker
	@mkdir -p var
	@$(BIN)/python -m deploy.run_local secret-key
	@bash deploy/run-local.sh $(SERVICES)

## The Apple sandbox and all five services in var/demo/, the whole story told with the CLI; runs until Ctrl-C.
demo: install broker
	@$(BIN)/python -m deploy.demo $(DEMO_ARGS)

## Run the whole test suite (needs RabbitMQ with its management plugin, and PostgreSQL).
test: install
	$(BIN)/pytest -q $(PYTEST_ARGS)
