"""Parallel layouts (tensor parallel, pipeline parallel, both) against the unsharded model
and against transformers: logits, every captured layer output, each rank's KV cache, and
cached greedy decoding. On the CPU the ranks share the device through the loopback
communicator (the same sharding and reduction code as InfiniCCL on GPUs).

Bounds:
  * against the unsharded run of ours: in f32 the two differ only in the order in which
    the tp partial sums of o_proj/down_proj are added (rank by rank, then the residual),
    a few float32 roundings per layer: NMSE <= 1e-10 (measured <= 6e-13 on the tiny
    fixtures). In f16/bf16 every rank's partial output is rounded to the dtype before the
    sum, so the two may differ by what rounding costs: the calibrated bound k x
    (transformers in the dtype vs the golden) + floor, as for cached vs recompute.
  * against transformers: the model-level calibrated bounds (model_logits, the gate on
    accumulated activations).
A failure names the layer (per-layer outputs) and, for the KV cache, the rank.
"""

from __future__ import annotations

import functools

import pytest

from .cases import INVALID, LAYOUTS, NO_LAYOUT
from .harness import reused
from .parallel import judge_parallel
from .prompts import prompt_ids


@functools.lru_cache(maxsize=2)
def parallel_model(path: str, dtype: str, device: str, tp: int, pp: int):
    from infinilm_models import AutoLlamaModel

    return reused(AutoLlamaModel.from_pretrained(path, device, dtype, tp=tp, pp=pp,
                                                 progress=False))


@pytest.fixture
def layout_shape(request, model_name: str, layout: str, verify) -> tuple[int, int]:
    """(tp, pp) of the layout; at setup, before any model loads: a config that cannot be
    read is this check's error (naming the file and the field), a checkpoint no layout
    fits is unsupported (naming the numbers)."""
    why = getattr(request.config, "_infinilm_layout_why", {}).get(model_name, "")
    if layout == INVALID:
        raise ValueError(f"{model_name}: its config cannot be read for the parallel "
                         f"layouts: {why}")
    if layout == NO_LAYOUT:
        verify.unsupported(RuntimeError(f"{model_name}: {why}"))
    return LAYOUTS[layout]


def test_model_parallel(model_name, dtype, layout, layout_shape, model_path, runtimes,
                        verify, tolerances, infini_device):
    from infinilm_models.runtime import device_count

    tp, pp = layout_shape
    if infini_device.type != "cpu" and device_count(infini_device.type) < tp * pp:
        verify.unsupported(RuntimeError(
            f"{layout} needs {tp * pp} {infini_device.type} devices; this machine has "
            f"{device_count(infini_device.type)}"))
    golden_m, ref_m, ours_m = runtimes
    dev = infini_device.type if infini_device.type != "cpu" else "cpu"
    par = parallel_model(str(model_path), dtype, dev, tp, pp)
    verify.param(tp=tp, pp=pp, layout=layout, devices=",".join(str(r.device) for r in par.ranks))
    judge_parallel(verify, tolerances, dtype, par, ours_m, golden_m, ref_m,
                   prompt_ids(model_path, 2, 9, verify))
