#!/usr/bin/env bash
# GPU step 1: build InfiniCore for NVIDIA with InfiniCCL, then the op checks (incl.
# capturability and the all-reduce on every GPU) and the op-level self-tests.
set -uo pipefail
source tools/gpu/env.sh
mkdir -p /tmp/keep && cp .gpu/p1/gguf.part00 /tmp/keep/ 2>/dev/null
nvidia-smi -L
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count(), 'transformers', transformers.__version__)"
build() { python3 -m infinilm_models.runtime.build --backend nvidia --cuda-arch sm_90 \
    --sdist .gpu/common/infinicore-0.1.0.tar.gz "$@" > /tmp/build.log 2>&1; }
time build --ccl || { echo "== --ccl build failed:"; tail -30 /tmp/build.log; \
                       echo "== building without InfiniCCL"; time build || tail -30 /tmp/build.log; }
tail -3 /tmp/build.log
ls -la ~/.cache/infinilm-models/infinicore-0.1.0-nvidia/lib
$PYTEST conformance/ops conformance/selftest/test_harness_ops.py -n 8 --report-dir /tmp/rep/ops 2>&1 \
    | grep -v "^\(PASSED\|XFAIL\)" | tail -60
keep ops
