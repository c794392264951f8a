#!/usr/bin/env bash
# GPU step 3: benchmarks, bf16, full scale: SmolLM2-135M shapes (transformers eager, with
# torch.compile, ours eager, ours replayed as a graph) and the 1B shape's parallel layouts.
set -uo pipefail
source tools/gpu/env.sh
B="--dtype bf16 -p no:xdist --benchmark-only --benchmark-enable --benchmark-warmup=on --benchmark-columns=median,rounds"
time $PYTEST conformance/perf/test_perf_model.py $B --benchmark-json=$OUT/bench-model.json \
    --report-dir /tmp/rep/bench ${BENCH_K:-} 2>&1 | tail -45
keep bench
time $PYTEST conformance/perf/test_perf_parallel.py $B --benchmark-json=$OUT/bench-parallel.json \
    --report-dir /tmp/rep/par 2>&1 | tail -30
keep par
