"""Stages of a bring-up, in the order a vendor asks: do the ops compute right, then one
layer, then the model, then the parallel layouts, then how fast.

  ops       conformance/ops (every op against float64), except the all-reduce
  layer     per-layer comparisons: test_model_golden (the reference itself),
            test_model_activations, test_model_decode, test_model_fused
  model     the rest of conformance/model: logits, KV cache, generation, perplexity,
            device graphs
  parallel  test_model_parallel (TP/PP layouts) and test_op_allreduce (InfiniCCL)
  perf      conformance/perf (benchmarks, each gated on its accuracy)

Every check gets its stage as a pytest marker at collection (`-m ops`, `-m "layer or
model"`); no test file declares one. `--stages` runs the stages in this order, one after
the other, and stops after the first stage in which a check failed, crashed or errored:
the later stages' checks are recorded not_run with a reason naming that stage and its
first failure. With `-x` it stops at the first broken op. Checks outside the stages (the
harness self-tests, the unit tests) run after them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath

STAGES = ("ops", "layer", "model", "parallel", "perf")
LAYER_CHECKS = frozenset({"model_golden", "model_activations", "model_decode", "model_fused"})
PARALLEL_CHECKS = frozenset({"model_parallel", "op_allreduce"})
MARKERS = {
    "ops": "stage 1: op checks against float64 (conformance/ops)",
    "layer": "stage 2: per-layer comparisons (activations, decode, fused, golden)",
    "model": "stage 3: model checks (logits, cache, generation, perplexity, graph)",
    "parallel": "stage 4: tensor/pipeline-parallel layouts and the all-reduce",
    "perf": "stage 5: benchmarks (conformance/perf)",
}


def stage_of(nodeid: str) -> str | None:
    """The stage of a check by its path and check name; None outside the stages."""
    path = PurePosixPath(nodeid.split("::", 1)[0].replace("\\", "/"))
    parts = path.parts
    if "conformance" not in parts:
        return None
    area = parts[parts.index("conformance") + 1] if parts[-1] != "conformance" else ""
    check = path.stem.removeprefix("test_")
    if check in PARALLEL_CHECKS:
        return "parallel"
    if area == "ops":
        return "ops"
    if area == "model":
        return "layer" if check in LAYER_CHECKS else "model"
    if area == "perf":
        return "perf"
    return None


def rank(nodeid: str) -> int:
    stage = stage_of(nodeid)
    return STAGES.index(stage) if stage is not None else len(STAGES)


@dataclass
class Gate:
    """The stages of one run as checks finish: which failed, and whether to stop before
    the next check. Fed by the reports of the process that runs the loop."""

    planned: dict[str, int] = field(default_factory=dict)  # stage -> checks
    ran: dict[str, int] = field(default_factory=dict)
    failed: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    stopped: str | None = None  # the stage after which the run stopped

    def plan(self, nodeids: list[str]) -> None:
        for n in nodeids:
            s = stage_of(n) or "other"
            self.planned[s] = self.planned.get(s, 0) + 1

    def finished(self, nodeid: str, failing: bool, message: str) -> None:
        s = stage_of(nodeid) or "other"
        self.ran[s] = self.ran.get(s, 0) + 1
        if failing:
            self.failed.setdefault(s, []).append((nodeid, message))

    def stop_reason(self, nodeid: str, next_nodeid: str | None) -> str | None:
        """Why to stop after `nodeid` (None: go on): its stage had a failure and the next
        check belongs to a later stage."""
        if next_nodeid is None or self.stopped is not None:
            return None
        here, there = stage_of(nodeid) or "other", stage_of(next_nodeid) or "other"
        if here == there or here not in self.failed:
            return None
        self.stopped = here
        bad = self.failed[here]
        first, why = bad[0]
        later = [s for s in (*STAGES, "other") if s in self.planned
                 and rank_of(s) > rank_of(here)]
        return (f"--stages: stage '{here}' failed ({len(bad)} of {self.ran.get(here, 0)} "
                f"checks; first {first}: {why.strip().splitlines()[0][:300] if why else '?'})"
                f", so stage(s) {', '.join(later)} did not start")

    def lines(self) -> list[str]:
        out = []
        for s in (*STAGES, "other"):
            if s not in self.planned:
                continue
            n, ran, bad = self.planned[s], self.ran.get(s, 0), len(self.failed.get(s, []))
            state = ("FAILED" if bad else "passed" if ran == n else
                     "not run" if ran == 0 else "partly run")
            out.append(f"  {s:<9} {state:<10} {ran} of {n} checks ran, {bad} failing"
                       + ("   <- stopped here" if s == self.stopped else ""))
        return out


def rank_of(stage: str) -> int:
    return STAGES.index(stage) if stage in STAGES else len(STAGES)
