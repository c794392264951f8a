#!/usr/bin/env bash
# GPU: the suite at 4429aff (before issues 18-21) on the 0.1.0 NVIDIA build: the "before" of
# the before/after compare (ops, and the nine tiny fixtures as issue 19 measured them).
# Here first: mkdir -p .gpu/old && git archive 4429aff | tar -x -C .gpu/old; then carry
# .gpu/common .gpu/prefixes .gpu/old (prefixes.tar.xz from tools/gpu/builds.sh).
set -uo pipefail
source tools/gpu/env.sh
mkdir -p ~/.cache/infinilm-models
tar -C ~/.cache/infinilm-models -xJf .gpu/prefixes/prefixes.tar.xz || exit 1
cd .gpu/old
export PYTHONPATH=$PWD:/tmp/site INFINI_ROOT=~/.cache/infinilm-models/infinicore-0.1.0-nvidia
T=tiny-mha,tiny-gqa,tiny-mqa,tiny-tied,tiny-untied,tiny-headdim,tiny-llama3rope,tiny-odd,tiny-sharded
one() { local name=$1; shift; local t0=$SECONDS
  $PYTEST "$@" --report-dir /tmp/rep/$name 2>&1 | grep -E "verdict|passed|failed" | tail -4
  echo "== $name: $(( SECONDS - t0 )) s wall"
  gzip -c "$(ls -td /tmp/rep/$name/2* | head -1)/results.json" > $OUT/$name-results.json.gz; }
one old-ops010 conformance/ops -n 8
one old-tiny010 conformance/model --model $T -n 12
