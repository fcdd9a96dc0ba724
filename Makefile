# Set-up and everyday commands. `make run` and `make test` install what they need first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= ./data
HOST ?= 127.0.0.1
PORT ?= 50051
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install run test bench bench-peers-deps protos generate lint clean

install: $(STAMP)

# Re-run the install whenever a dependency list or the pins change.
$(STAMP): constraints.txt pyproject.toml client/pyproject.toml index/pyproject.toml server/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=25.1"
	$(PY) -m pip install -q -c constraints.txt -e ./client -e "./index[sentiment]" -e ./server --group dev
	touch $(STAMP)

run: install
	$(VENV)/bin/audience serve --data-dir $(DATA_DIR) --host $(HOST) --port $(PORT) $(SERVE_ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) bench/run.py lookalike --data ../shared/data --json bench-lookalike.json

# The vector databases `bench/run.py peers` compares with (Milvus Lite, Chroma, LanceDB).
bench-peers-deps: install
	$(PY) -m pip install -q -c constraints.txt -r bench/peers-requirements.txt

protos: install
	PYTHON=$(PY) bash scripts/gen_protos.sh

# The stubs from protos/, then the blocking client from the asyncio one.
generate: protos
	$(PY) scripts/unasync.py

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
