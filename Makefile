# `make run` sets everything up and runs the main job on the embedded default;
# `make test` runs the whole suite against real embedded services.
VENV ?= .venv
PY := $(VENV)/bin/python
AMEM := $(VENV)/bin/amem
LOCOMO := ../shared/data/locomo-dev.json
DATA ?= $(if $(wildcard $(LOCOMO)),$(LOCOMO),examples/sample-chat.jsonl)
# What `make run` rehydrates at the end: a LoCoMo conversation and one of its questions.
ASK ?= $(if $(wildcard $(LOCOMO)),--session conv-26 --query "When did Caroline go to the LGBTQ support group?",--session trip-planning)

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install run test lint format bench down clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: pip takes the CPU build from this machine's disk; any other
	# version pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	# The agent-facing surfaces' extras too: their tests use the real client libraries.
	$(PY) -m pip install --quiet -e '.[dev,mcp,agents,langchain]'
	touch $@

install: $(VENV)/.installed

run: install
	$(AMEM) up
	$(AMEM) import $(DATA)
	$(AMEM) project start
	$(AMEM) project wait
	$(AMEM) verify
	$(AMEM) status
	$(AMEM) rehydrate --tenant default $(ASK) --budget 600

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	$(PY) bench/append.py
	$(PY) bench/enrichment.py
	$(PY) bench/project.py
	$(PY) bench/recall.py
	$(PY) bench/rehydrate.py
	$(PY) bench/scale.py

down: install
	$(AMEM) project stop
	$(AMEM) down

clean: down
	rm -rf .amem
