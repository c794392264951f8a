"""LlamaMLP: down_proj(silu(gate_proj(x)) * up_proj(x)).

    gate_up  = x @ [gate_proj; up_proj].T (+ bias)   one gemm over the fused weight
    act      = activation(gate_up)                   = up * silu(gate)
    hidden  += act @ down_proj.T (+ bias)            the residual folded in (beta = 1)

The activation is a step chosen at construction from the fusion plan (fusion.py):
silu_and_mul over gate_up itself (vLLM's layout: the gate half, then the up half) where
the build has it, else swiglu over its two halves (InfiniCore 0.1.0).
"""

from __future__ import annotations

from ...runtime import Tensor, ops
from .attention import Linear, fused
from .buffers import Buffers
from .fusion import Fused

GATE_UP_WEIGHT = ("gate_up_proj.weight", ("gate_proj.weight", "up_proj.weight"))
GATE_UP_BIAS = ("gate_up_proj.bias", ("gate_proj.bias", "up_proj.bias"))


def swiglu(bufs: Buffers) -> None:
    ops.swiglu(bufs.act, bufs.up, bufs.gate)


def silu_and_mul(bufs: Buffers) -> None:
    ops.silu_and_mul(bufs.act, bufs.gate_up)


class LlamaMLP:
    def __init__(self, weights: dict[str, Tensor], fusions: Fused | None = None) -> None:
        self.gate_up_proj = fused(weights, *GATE_UP_WEIGHT)
        inter = self.gate_up_proj.shape[0] // 2
        self.gate_proj = self.gate_up_proj.narrow(0, 0, inter)
        self.up_proj = self.gate_up_proj.narrow(0, inter, inter)
        self.down_proj = weights["down_proj.weight"]
        bias = fused(weights, *GATE_UP_BIAS) if GATE_UP_BIAS[1][0] in weights or \
            GATE_UP_BIAS[0] in weights else None
        self.gate_up = Linear(self.gate_up_proj, bias)
        self.down = Linear(self.down_proj, weights.get("down_proj.bias"))
        # One intermediate feature: gate and up get buffers (and gemms) of their own
        # (buffers.py), and the activation is swiglu over them.
        self.split = inter == 1
        if self.split:
            self.gate = Linear(self.gate_proj, bias.narrow(0, 0, 1) if bias is not None else None)
            self.up = Linear(self.up_proj, bias.narrow(0, 1, 1) if bias is not None else None)
        self.activation = silu_and_mul if fusions and fusions.silu_and_mul and \
            not self.split else swiglu

    def forward(self, x: Tensor, bufs: Buffers, step: object, out: Tensor,
                residual: bool = False, bias: bool = True) -> Tensor:
        """x [T, hidden] (normed) -> `out` [T, hidden] (out += mlp with `residual`);
        `bias`: this rank adds down_proj's bias (tensor parallelism)."""
        if self.split:
            self.gate(bufs.gate, x)
            self.up(bufs.up, x)
        else:
            self.gate_up(bufs.gate_up, x)
        self.activation(bufs)
        self.down(out, bufs.act, accumulate=residual, bias=bias)
        return out
