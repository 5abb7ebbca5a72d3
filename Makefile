# Quickstart: `make demo` and `make test`. Both create .venv if it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup demo test clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU wheel first: a bare `torch` requirement would pull a CUDA build of several GB.
	$(PIP) show torch >/dev/null 2>&1 || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# Trains AVA-p on the embedded synthetic task, then draws the per-token rewards of a few evaluation pairs.
demo: setup
	$(VENV)/bin/avalign train
	$(VENV)/bin/avalign score --model_name_or_path outputs/ava-synthetic --dataset_name synthetic --max_rows 12 \
		--output_file outputs/ava-synthetic/scored.jsonl --html outputs/ava-synthetic/report.html
	@echo "Per-token rewards of 12 evaluation pairs: open outputs/ava-synthetic/report.html in a browser"

test: setup
	$(PY) -m pytest tests

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
