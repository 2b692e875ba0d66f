# Everything runs from a virtualenv of its own (.venv), made on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: all demo test lint protos protos-release bench fuzz soak dev clean

all: test

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "longline needs Python 3.11 or newer, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# Starts an embedded Redis, a control plane and a worker, then runs the blog_post example live.
demo: $(STAMP)
	$(BIN)/longline dev --run blog_post --input '{"topic": "tides", "sections": 3}'

# The suite on one Redis, then, on a local Redis Cluster of 3 masters, every test of
# CLUSTER_TESTS that uses the session's Redis (docs/testing.md).
# Schedules' tests run once: their keys are one slot ({schedules}), whose scripts the cluster
# pass runs in test_partitions; the rest is timing that no topology changes.
CLUSTER_TESTS := tests/integration tests/e2e tests/chaos/test_chaos.py \
	--ignore=tests/integration/test_schedules.py
test: $(STAMP)
	cd protos && ../$(BIN)/buf lint && ../$(BIN)/buf breaking --against baseline.binpb
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(BIN)/python -m pytest --redis-cluster $(CLUSTER_TESTS) $(PYTEST_ARGS)

# mypy cannot follow setuptools' editable-install import hook, so it checks a plain install;
# so does lint-imports (the import contracts in pyproject.toml).
lint: $(STAMP)
	cd protos && ../$(BIN)/buf lint && ../$(BIN)/buf breaking --against baseline.binpb
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	rm -rf $(VENV)/lint-site
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation --target $(VENV)/lint-site . 2>/dev/null
	cd $(VENV)/lint-site && MYPYPATH=. ../bin/mypy --config-file ../../pyproject.toml -p longline
	cd $(VENV)/lint-site && PYTHONPATH=. ../bin/lint-imports ../../pyproject.toml
	rm -rf build longline.egg-info

protos: $(STAMP)
	$(BIN)/python protos/generate.py

# At a release: the protos as they are become the baseline that `buf breaking` holds us to.
protos-release: $(STAMP)
	cd protos && ../$(BIN)/buf build -o baseline.binpb

# The peers B1 and B2 compare with (arq, Celery, RQ), and the engines of B1, B2 and B4
# (Temporal with its dev server, DBOS), live in a virtualenv of their own.
PEERS := $(VENV)/peers
$(PEERS)/.installed: tests/bench/peers-requirements.txt $(STAMP)
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/bin/python -m pip install --quiet -r tests/bench/peers-requirements.txt
	touch $@

# B1-B10 (tests/bench); BENCH_ARGS=--quick for a smoke run, --no-peers for longline alone,
# --no-engines to leave out Temporal and DBOS.
BENCH_ARGS ?=
bench: $(STAMP) $(PEERS)/.installed
	$(BIN)/python -m tests.bench $(BENCH_ARGS)

# The API fuzz suite with many more examples than `make test` runs (2,000 per test).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest tests/fuzz --timeout=3600 $(PYTEST_ARGS)

# The soak for 30 minutes, a worker killed every minute, Redis restarted once; prints its
# table (`make test` runs a one-minute form).
SOAK_SECONDS ?= 1800
soak: $(STAMP)
	LONGLINE_SOAK_SECONDS=$(SOAK_SECONDS) LONGLINE_SOAK_KILL_EVERY=60 $(BIN)/python -m pytest \
		tests/chaos/test_soak.py -s --timeout=$$(( $(SOAK_SECONDS) + 900 )) $(PYTEST_ARGS)

dev: $(STAMP)
	$(BIN)/longline dev

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
