#!/usr/bin/env bash
# GPU: both InfiniCores for NVIDIA (sm_90, InfiniCCL), side by side: the PyPI sdist 0.1.0
# and the upstream snapshot (carried in .gpu/common), then the op suite on each. The two
# prefixes come back packed in $OUT, so later calls carry them instead of rebuilding.
#   OPS=0: builds only.  PACK=0: do not pack the prefixes.
set -uo pipefail
source tools/gpu/env.sh
nvidia-smi -L
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count(), 'transformers', transformers.__version__)"
jobs=$(( $(nproc) / 2 ))
build() {  # build(name, source): the log in /tmp/build-<name>.log, the wall time in it too
    local start=$SECONDS
    python3 -m infinilm_models.runtime.build --backend nvidia --ccl --cuda-arch sm_90 \
        --source "$2" -j "$jobs" > "/tmp/build-$1.log" 2>&1
    local rc=$?
    echo "== build $1: exit $rc in $(( SECONDS - start )) s" | tee -a "/tmp/build-$1.log"
}
build 010 .gpu/common/infinicore-0.1.0.tar.gz &
build up .gpu/common/InfiniCore-2cec6ce6.tar.gz &
wait
for n in 010 up; do echo "== build $n:"; grep -v "^  \[" /tmp/build-$n.log | tail -25; done
cp /tmp/build-010.log /tmp/build-up.log "$OUT/" 2>/dev/null
P010=~/.cache/infinilm-models/infinicore-0.1.0-nvidia
PUP=~/.cache/infinilm-models/infinicore-git-2cec6ce6-nvidia
ls -la $P010/lib $PUP/lib
if [ "${PACK:-1}" = 1 ]; then
    tar -C ~/.cache/infinilm-models -cJf "$OUT/prefixes.tar.xz" \
        infinicore-0.1.0-nvidia infinicore-git-2cec6ce6-nvidia && ls -la "$OUT/prefixes.tar.xz"
fi
[ "${OPS:-1}" = 1 ] || exit 0
for n in 010 up; do
    root=$P010; [ $n = up ] && root=$PUP
    echo "== op suite on $n"
    INFINI_ROOT=$root timeout 200 $PYTEST conformance/ops -n 8 --report-dir /tmp/rep/ops$n 2>&1 \
        | grep -v "^\(PASSED\|XFAIL\|SKIPPED\|unsupported:\|known_defect:\)" | tail -45
    keep ops$n
done
