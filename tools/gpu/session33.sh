#!/usr/bin/env bash
# GPU runs of issue 33 (and the GPU parts of 28, 29, 32), one lent machine kept warm
# between calls. Run from the tree's root (the command may cd into a copy carried in
# .gpu/src, with .gpu linked back). CALL picks the call:
#   CALL=A  both builds (packed back in parts), the whole default matrix on upstream but
#           SmolLM2 (ops + every tiny and family fixture, f32/f16/bf16, the long context
#           and long horizon), ops + fixtures on 0.1.0, the
#           replayed step kernel by kernel before/after spans (profile_step.py)
#   CALL=B  SmolLM2 from its GGUF (part00 kept from A, part01 carried now): its model
#           checks on both builds (the 8,000-token long context, the long horizon), the
#           support probe (ops + SmolLM2's calls) on both
#   CALL=C  decode benchmarks at every context of the full scale, bf16, upstream
#   CALL=D  decode benchmarks, bf16, 0.1.0, BENCH_K (default: p32 and p2048)
set -uo pipefail
source tools/gpu/env.sh
P010=~/.cache/infinilm-models/infinicore-0.1.0-nvidia
PUP=~/.cache/infinilm-models/infinicore-git-2cec6ce6-nvidia
mkdir -p /tmp/keep
one() {  # one(name, build dir, args...): a suite run, its results gzipped into $OUT
    local name=$1 root=$2; shift 2; local t0=$SECONDS
    INFINI_ROOT=$root $PYTEST "$@" --report-dir /tmp/rep/$name 2>&1 \
        | grep -v "^\(PASSED\|XFAIL\|SKIPPED\|unsupported:\|known_defect:\|finding:\)" | tail -14
    echo "== $name: $(( SECONDS - t0 )) s wall"
    gzip -c "$(ls -td /tmp/rep/$name/2* | head -1)/results.json" > "$OUT/$name-results.json.gz"
}
bench() {  # bench(name, build dir, -k expression)
    local t0=$SECONDS
    INFINI_ROOT=$2 $PYTEST conformance/perf/test_perf_model.py --dtype bf16 -p no:xdist \
        --benchmark-only --benchmark-enable --benchmark-warmup=on \
        --benchmark-columns=median,rounds --benchmark-json="$OUT/bench-$1.json" \
        --report-dir /tmp/rep/bench-$1 -k "$3" 2>&1 | grep -v "^PASSED" | tail -45
    echo "== bench $1: $(( SECONDS - t0 )) s wall"
}
smollm2() {
    if [ ! -f /tmp/keep/smollm2.gguf ]; then
        cat /tmp/keep/gguf.part00 .gpu/p2/gguf.part01 > /tmp/keep/smollm2.gguf || return 1
        echo "$(cat .gpu/common/gguf.sha256)  /tmp/keep/smollm2.gguf" | sha256sum -c - || return 1
    fi
    export INFINILM_SMOLLM2_GGUF=/tmp/keep/smollm2.gguf
    python3 -m infinilm_fixtures.smollm2 2>&1 | tail -1
}
case ${CALL:-A} in
A)
    nvidia-smi -L
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
    cp .gpu/p1/gguf.part00 /tmp/keep/ 2>/dev/null
    for n in 010 up; do
        src=.gpu/common/infinicore-0.1.0.tar.gz; [ $n = up ] && src=.gpu/common/InfiniCore-2cec6ce6.tar.gz
        ( t0=$SECONDS; python3 -m infinilm_models.runtime.build --backend nvidia --ccl \
            --cuda-arch sm_90 --source $src -j 8 > /tmp/build-$n.log 2>&1
          echo "== build $n: exit $? in $(( SECONDS - t0 )) s" | tee -a /tmp/build-$n.log ) &
    done
    wait
    for n in 010 up; do tail -4 /tmp/build-$n.log; gzip -c /tmp/build-$n.log > $OUT/build-$n.log.gz; done
    tar -C ~/.cache/infinilm-models -cJf /tmp/prefixes.tar.xz infinicore-0.1.0-nvidia \
        infinicore-git-2cec6ce6-nvidia && split -b 15M /tmp/prefixes.tar.xz $OUT/prefixes.part
    one fullup $PUP conformance/ops conformance/model -n auto
    one full010 $P010 conformance/ops conformance/model -n auto
    for w in "" --whole; do INFINI_ROOT=$PUP timeout 100 python3 tools/gpu/profile_step.py $w; done
    ;;
B)
    smollm2 || exit 1
    one smolup $PUP conformance/model --model smollm2 -n auto
    one smol010 $P010 conformance/model --model smollm2 -n auto
    for b in up 010; do root=$PUP; [ $b = 010 ] && root=$P010
        INFINI_ROOT=$root $PYTEST conformance/ops --support --model smollm2 -p no:xdist \
            --report-dir /tmp/rep/support$b 2>&1 | tail -3
        cp "$(ls -td /tmp/rep/support$b/2* | head -1)/support.md" $OUT/support-nvidia-$b.md
    done
    ;;
C) bench up $PUP decode ;;
D) bench 010 $P010 "${BENCH_K:-decode and (p32 or p2048)}" ;;
esac
