# The two commands the README opens with. Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test lint bench-upload bench-gateway bench-traces bench-providers bench-curation bench-clustering clean


$(STAMP): pyproject.toml
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

serve: $(STAMP)
	$(BIN)/opentracy serve

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check opentracy tests bench
	$(BIN)/ruff format --check opentracy tests bench

bench-upload: $(STAMP)
	$(BIN)/python bench/upload.py

.PHONY: bench-upload-decoders bench-upload-formats bench-segment-codecs bench-rows
bench-upload-formats: $(STAMP)
	$(BIN)/python bench/upload_formats.py

bench-rows: $(STAMP)
	$(BIN)/python bench/rows.py

bench-upload-decoders: $(STAMP)
	$(BIN)/python bench/upload_decoders.py

bench-segment-codecs: $(STAMP)
	$(BIN)/python bench/segment_codecs.py

bench-gateway: $(STAMP)
	$(BIN)/python bench/gateway.py

bench-traces: $(STAMP)
	$(BIN)/python bench/traces.py

bench-providers: $(STAMP)
	$(BIN)/python bench/providers.py

bench-curation: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/curation.py

# --- clustering (issue 6) ---
bench-clustering: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python bench/clustering.py

# --- generation (issue 7) ---
.PHONY: bench-generation
bench-generation: $(STAMP)
	$(BIN)/python bench/generation.py

.PHONY: bench-cluster-traces
bench-cluster-traces: $(STAMP)
	$(BIN)/python bench/cluster_traces.py

clean:
	rm -rf $(VENV) .opentracy .pytest_cache
