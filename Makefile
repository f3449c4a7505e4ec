# Quick start: `make demo` and `make test`. Both create .venv if needed (idempotent).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-slow test-faults bench bench-smoke bench-pruning bench-agent clean

venv: $(STAMP)

# torch/torchvision come from pip's local wheel cache when one is configured (plain pip, not uv).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tdc-agent run --config examples/digits.yaml

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# A larger seeded crash/chaos sweep than the default suite's; writes benchmarks/results/reliability.md.
test-faults: $(STAMP)
	rm -f benchmarks/results/faults.jsonl
	TDC_FAULT_CHAINS=6 TDC_FAULT_KILLS=6 TDC_CHAOS_RUNS=3 TDC_FAULT_ALL=1 TDC_FUZZ_EXAMPLES=200 \
		TDC_FAULT_SUMMARY=$(CURDIR)/benchmarks/results/faults.jsonl \
		$(PY) -m pytest -q tests/test_faults.py tests/test_security.py
	$(PY) tools/reliability_report.py benchmarks/results/faults.jsonl

# The paper's tables on digits, 3 seeds (~1.5 h on 2 cores; resumable). Not in CI.
bench: $(STAMP)
	$(PY) tools/bench_tables.py

# The same code paths at toy size (also part of `make test`).
bench-smoke: $(STAMP)
	$(PY) -m pytest -q tests/test_bench.py

bench-pruning: $(STAMP)
	$(PY) tools/bench_pruning.py --preset ddpm-cifar10 --repeats 3

bench-agent: $(STAMP)
	$(PY) tools/bench_agent.py --records 10000 --queries 200

clean:
	rm -rf runs .pytest_cache
