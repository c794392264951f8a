#!/usr/bin/env bash
# GPU: the suites on both InfiniCores, built earlier and carried back packed
# (.gpu/prefixes/prefixes.tar.xz from tools/gpu/builds.sh), no rebuild.
#   WHAT="ops tiny"        op suite and the tiny-model suite on each build (default)
#   WHAT="full"            the whole default matrix on upstream (ops + every model fixture
#                          incl. SmolLM2, f32/f16/bf16), timed: the 5-minute target
#   WHAT="smollm2-010"     SmolLM2's model checks on 0.1.0
#   WHAT="bench"           decode/prefill benchmarks, bf16, both builds; BENCH_K is the
#                          -k expression (default "decode or prefill512")
#   BUILDS="up 010"        which builds (default both)
# SmolLM2's GGUF travels in two halves (.gpu/p1 in one call, .gpu/p2 in the next).
set -uo pipefail
source tools/gpu/env.sh
mkdir -p ~/.cache/infinilm-models /tmp/keep
if [ ! -d ~/.cache/infinilm-models/infinicore-git-2cec6ce6-nvidia ]; then
    tar -C ~/.cache/infinilm-models -xJf .gpu/prefixes/prefixes.tar.xz || exit 1
fi
P010=~/.cache/infinilm-models/infinicore-0.1.0-nvidia
PUP=~/.cache/infinilm-models/infinicore-git-2cec6ce6-nvidia
[ -f .gpu/p1/gguf.part00 ] && cp .gpu/p1/gguf.part00 /tmp/keep/
if [ -f .gpu/p2/gguf.part01 ] && [ ! -f /tmp/keep/smollm2.gguf ]; then
    cat /tmp/keep/gguf.part00 .gpu/p2/gguf.part01 > /tmp/keep/smollm2.gguf
    echo "$(cat .gpu/common/gguf.sha256)  /tmp/keep/smollm2.gguf" | sha256sum -c - || exit 1
fi
if [ -f /tmp/keep/smollm2.gguf ]; then
    export INFINILM_SMOLLM2_GGUF=/tmp/keep/smollm2.gguf
    python3 -m infinilm_fixtures.smollm2 2>&1 | tail -1
fi
root() { [ "$1" = up ] && echo $PUP || echo $P010; }
keep() {  # the newest run's results.json, gzipped (the report is rendered back home)
    local run; run=$(ls -td /tmp/rep/"$1"/2* | head -1)
    gzip -c "$run/results.json" > "$OUT/$1-results.json.gz"
}
run() {  # run(name, build, args...): one suite run, its results kept in $OUT
    local name=$1 b=$2; shift 2
    local t0=$SECONDS
    INFINI_ROOT=$(root $b) $PYTEST "$@" --report-dir /tmp/rep/$name 2>&1 \
        | grep -v "^\(PASSED\|XFAIL\|SKIPPED\|unsupported:\|known_defect:\|finding:\)" | tail -25
    echo "== $name on $b: $(( SECONDS - t0 )) s wall"
    keep $name
}
TINY=tiny-mha,tiny-gqa,tiny-mqa,tiny-tied,tiny-untied,tiny-headdim,tiny-llama3rope,tiny-odd,tiny-sharded
for what in ${WHAT:-ops tiny}; do
    for b in ${BUILDS:-up 010}; do
        case $what in
            ops) run ops$b $b conformance/ops -n 8 ;;
            tiny) run tiny$b $b conformance/model --model $TINY -n auto ;;
            full) run full$b $b conformance/ops conformance/model -n auto ;;
            smollm2) run smol$b $b conformance/model --model smollm2 -n auto ;;
            bench) INFINI_ROOT=$(root $b) timeout 280 $PYTEST conformance/perf/test_perf_model.py \
                       --dtype bf16 -p no:xdist --benchmark-only --benchmark-enable \
                       --benchmark-warmup=on --benchmark-columns=median,rounds \
                       --benchmark-json=$OUT/bench-$b.json --report-dir /tmp/rep/bench$b \
                       -k "${BENCH_K:-decode or prefill512}" 2>&1 | tail -22 ;;
        esac
    done
done
