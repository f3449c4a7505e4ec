# Quick start: `make demo` and `make test`. Both create .venv if needed (idempotent).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-fast lint-imports test-slow test-faults bench bench-speed bench-paper bench-smoke bench-pruning bench-agent bench-agent-quality bench-agent-tokens bench-allocation bench-fd-attribution clean

venv: $(STAMP)

# torch/torchvision come from pip's local wheel cache when one is configured (plain pip, not uv).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tdc-agent run --config examples/digits.yaml

# Test processes (pytest-xdist workers, one torch thread each: tests/conftest.py). JOBS=0 runs the
# suite serially in one process. loadgroup: tests go to whichever worker is free, except the modules
# that tests/conftest.py keeps on one worker (ONE_WORKER_MODULES).
JOBS ?= 2
XDIST := -n $(JOBS) --dist loadgroup

# The layers contract (pyproject's [tool.importlinter]) first, then the default suite in parallel (7-7.5 min alone on 2 cores; target <= 8).
test: lint-imports
	$(PY) -m pytest -q $(XDIST)

# The unit tests only (<= 3 min): no end-to-end runs, subprocesses, wheel builds or fuzzing.
test-fast: lint-imports
	$(PY) -m pytest -q $(XDIST) -m "fast and not slow"

lint-imports: $(STAMP)
	$(VENV)/bin/lint-imports

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# A larger seeded crash/chaos sweep than the default suite's; writes benchmarks/results/reliability.md.
test-faults: $(STAMP)
	rm -f benchmarks/results/faults.jsonl
	TDC_FAULT_CHAINS=6 TDC_FAULT_KILLS=6 TDC_CHAOS_RUNS=3 TDC_FAULT_ALL=1 TDC_FUZZ_EXAMPLES=200 \
		TDC_FAULT_SUMMARY=$(CURDIR)/benchmarks/results/faults.jsonl \
		$(PY) -m pytest -q tests/test_faults.py tests/test_security.py tests/test_hostile.py
	$(PY) tools/reliability_report.py benchmarks/results/faults.jsonl

# Table I at the paper's DDIM-100 (and DDIM-25/50, same noise): the recipe tuned earlier on seeds
# 100-101, 8 fresh seeds, 2000 samples per model, paired FD and eps-loss ratios vs the equal-compute
# base with 95 % CIs (~80 CPU-minutes per seed, so ~5 h on 2 cores; resumable, seed by seed). Not in CI.
# On a GPU: `$(PY) tools/bench_table1.py run --scale full --device cuda --jobs 0`.
bench: $(STAMP)
	$(PY) tools/bench_table1.py run --jobs 2 --threads 1 --rows core --choice benchmarks/results/table1-tuning-ddim25.json

# Stage 2's steps shared by need vs by size, on Table I's seeds and bases (after `make bench`; ~1.5 h).
bench-allocation: $(STAMP)
	$(PY) tools/bench_allocation.py run --jobs 2

# Which group's member moves Table I's FD: each TDC row sampled again with one group served by the
# equal-compute base, same noise (after `make bench`; ~40 min per row on 2 cores).
bench-fd-attribution: $(STAMP)
	$(PY) tools/table1_fd_attribution.py run --rows tdc-no-prune,tdc-agent --jobs 2

# The sampling-speed benchmark (ddpm-cifar10 at 32x32 and the tiny demo model); run it alone.
bench-speed: $(STAMP)
	$(PY) tools/bench_speed.py

# The paper's other tables on digits (Tables II/III/V/VI, recipe items), 3 seeds (~1.5 h on 2 cores).
bench-paper: $(STAMP)
	$(PY) tools/bench_tables.py

# The same code paths at toy size (also part of `make test`).
bench-smoke: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow" tests/test_bench.py tests/test_bench_table1.py

bench-pruning: $(STAMP)
	$(PY) tools/bench_pruning.py --preset ddpm-cifar10 --repeats 3

bench-agent: $(STAMP)
	$(PY) tools/bench_agent.py --records 10000 --queries 200

# The agent's schemes vs uniform and global baselines at MACs parity (+-0.5 %) on the held-out test
# split, round 1 vs the full search, FD after fine-tuning (paired CI), memory transfer vs noise.
# 6 seeds, two worker processes of 1 thread (estimate ~1.5-2 h on 2 idle cores; the JSON records the
# seconds each part took). Resumable, seed by seed. Writes benchmarks/results/agent_quality.*
bench-agent-quality: $(STAMP)
	$(PY) tools/bench_agent_quality.py --jobs 2 --threads 1

# LLM input tokens per group for each preset (scripted LLM behind a local server; bytes/4 estimate).
bench-agent-tokens: $(STAMP)
	$(PY) tools/bench_agent_tokens.py

clean:
	rm -rf runs .pytest_cache
