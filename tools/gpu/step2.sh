#!/usr/bin/env bash
# GPU step 2: SmolLM2 from its GGUF (carried in two halves, .gpu/p1 then .gpu/p2), then the
# model checks: every fixture x f32/f16/bf16, parallel layouts on the 2 GPUs, graph decode.
set -uo pipefail
source tools/gpu/env.sh
cat /tmp/keep/gguf.part00 .gpu/p2/gguf.part01 > /tmp/keep/smollm2.gguf
echo "$(cat .gpu/common/gguf.sha256)  /tmp/keep/smollm2.gguf" | sha256sum -c - || exit 1
export INFINILM_SMOLLM2_GGUF=/tmp/keep/smollm2.gguf
python3 -m infinilm_fixtures.smollm2 2>&1 | tail -2
time $PYTEST conformance/model -n 12 --report-dir /tmp/rep/model ${MODEL_ARGS:-} 2>&1 \
    | grep -v "^\(PASSED\|XFAIL\)" | tail -40
keep model
if [ -n "${DECODE_BENCH:-}" ]; then  # the decode benchmarks, all four paths in one run
    time $PYTEST conformance/perf/test_perf_model.py -k decode --dtype bf16 -p no:xdist \
        --benchmark-only --benchmark-enable --benchmark-warmup=on \
        --benchmark-columns=median,rounds --benchmark-json=$OUT/bench-decode.json \
        --report-dir /tmp/rep/decode 2>&1 | tail -25
    keep decode
fi
