# Sourced by the step scripts on the lent GPU machine (no network there): the wheels and
# the InfiniCore sdist travel in .gpu/common (carried), NVLink multicast stays off.
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
    NVSHMEM_DISABLE_NVLS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
if [ ! -d /tmp/site/gguf ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .gpu/common/*.whl || exit 1
fi
export PYTHONPATH=$PWD:/tmp/site PATH=/tmp/site/bin:$PATH
PYTEST="python3 -m pytest -p conformance.plugin -p no:cacheprovider -q --infini-device nvidia"
keep() {  # keep(run-dir name): results.json (and the report) of the newest run, into $OUT
    local run; run=$(ls -td /tmp/rep/"$1"/2* | head -1)
    cp "$run/results.json" "$OUT/$1-results.json"
    [ -f "$run/index.html" ] && cp "$run/index.html" "$OUT/$1-index.html"
}
