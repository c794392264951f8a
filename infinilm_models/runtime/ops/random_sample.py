"""Pick one token id from logits [vocab]: argmax, or top-k/top-p/temperature sampling.

InfiniCore sorts the logits, accumulates exp((l - max) / temperature), and returns the
first token whose cumulative mass reaches random_val * min(mass(top-k), topp * total).
topk <= 1 or topp <= 0 gives argmax. `random_val` in [0, 1) comes from the caller's RNG,
so sampling is reproducible from a seed.
"""

from __future__ import annotations

import ctypes

from ..tensor import Tensor
from ._base import CachedOp

_op = CachedOp("RandomSample")
_batch = CachedOp("RandomSampleBatch")


def random_sample(result: Tensor, logits: Tensor, random_val: float = 0.0, topp: float = 0.0,
                  topk: int = 1, temperature: float = 1.0) -> Tensor:
    """`result` is a 0-d integer tensor receiving the id."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= random_val < 1.0:
        raise ValueError(f"random_val must be in [0, 1), got {random_val}")
    _op([result, logits], ctypes.c_float(random_val), ctypes.c_float(topp), int(topk),
        ctypes.c_float(temperature))
    return result


def random_sample_batch(result: Tensor, logits: Tensor, random_val, topp, topk,
                        temperature) -> Tensor:
    """One id per row of logits [batch, vocab] into result [batch], each row with its own
    random_val, topp, topk and temperature (sequences of `batch` numbers), each row by the
    algorithm of `random_sample`. Absent from InfiniCore 0.1.0.

    The four arrays go to InfiniCore as host arrays (`const float *` in
    include/infiniop/ops/random_sample.h, as upstream's own test passes them: ctypes arrays
    in test/infiniop/random_sample.py). Upstream main at 2cec6ce6 declares the entry points
    but implements them for no device, so which memory a kernel reads is not settled there:
    a backend that reads them in device code would need device copies instead."""
    if logits.ndim != 2:
        raise ValueError(f"random_sample_batch: logits must be [batch, vocab], got "
                         f"{list(logits.shape)}")
    batch = logits.shape[0]
    if tuple(result.shape) != (batch,):
        raise ValueError(f"random_sample_batch: result must be [{batch}], got "
                         f"{list(result.shape)}")
    arrays = []
    for name, values, ctype in (("random_val", random_val, ctypes.c_float),
                                ("topp", topp, ctypes.c_float), ("topk", topk, ctypes.c_int),
                                ("temperature", temperature, ctypes.c_float)):
        values = list(values)
        if len(values) != batch:
            raise ValueError(f"random_sample_batch: {name} has {len(values)} values for "
                             f"{batch} rows")
        arrays.append((ctype * batch)(*values))
    if any(not 0.0 <= v < 1.0 for v in arrays[0]):  # as float32: 1 - 1e-9 rounds to 1
        raise ValueError(f"random_val must be in [0, 1), got {list(arrays[0])}")
    if any(t <= 0 for t in arrays[3]):
        raise ValueError(f"temperature must be > 0, got {list(arrays[3])}")
    # The arrays live until the call returns: enough for a backend that reads them on the
    # host, or copies them with cudaMemcpyAsync (from pageable memory it copies before it
    # returns); not for a graph capture, which would keep their addresses.
    _batch([result, logits], *arrays, int(batch))
    return result
