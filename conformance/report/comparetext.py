"""A run-against-baseline comparison (compare.py) as the text the CLI and the perf gate
print."""

from __future__ import annotations

from .compare import Comparison, Side


def describe_side(side: Side) -> str:
    """verdict, the statuses present, and how many planned checks did not run."""
    text = (side.verdict_text or side.verdict.upper()) + ", " + ", ".join(
        f"{n} {s}" for s, n in side.counts.items() if n)
    if side.counts.get("not_run"):
        text += f"; NOT RUN: {side.counts['not_run']} of {side.planned} planned checks"
    return text


def format_text(c: Comparison, limit: int = 40) -> str:
    lines = [f"compare {c.run_id} against baseline {c.baseline_id}: {c.matched} checks matched",
             f"  newly failing: {len(c.newly_failing)}   newly passing: {len(c.newly_passing)}"
             f"   other status changes: {len(c.other_changes)}   only in run: "
             f"{len(c.only_in_run)}   only in baseline: {len(c.only_in_baseline)}   "
             f"errors grown > {c.factor:g}x: {len(c.grown)}"]
    for name, side in (("run", c.run), ("baseline", c.baseline)):
        if side is not None:
            lines.append(f"  {name} {side.run_id}: {describe_side(side)}")
            lines.append(f"  {' ' * len(name)} on {side.build}")
            lines += [f"  {' ' * len(name)} {line}" for line in side.policy]
    if c.models_matched_by == "name":
        lines.append("  models matched by name: a run recorded no checkpoint digests")

    def section(title: str, items: list) -> None:
        if not items:
            return
        lines.append(f"\n{title} ({len(items)}):")
        for ch in items[:limit]:
            lines.append(f"  {ch.baseline or '-':>12} -> {ch.run or '-':<12} {ch.key}")
        if len(items) > limit:
            lines.append(f"  ... {len(items) - limit} more")

    section("NEWLY FAILING", c.newly_failing)
    section("newly passing", c.newly_passing)
    section("other status changes", c.other_changes)
    section("only in run", c.only_in_run)
    section("only in baseline", c.only_in_baseline)
    if c.grown:
        lines.append(f"\nerrors grown by more than {c.factor:g}x ({len(c.grown)}), largest first:")
        for g in c.grown[:limit]:
            lines.append(f"  x{g.ratio:<9.3g} {g.metric:<9} {g.baseline:.3g} -> {g.run:.3g}  "
                         f"{g.key}  {g.where}")
        if len(c.grown) > limit:
            lines.append(f"  ... {len(c.grown) - limit} more")
    if c.perf_note:
        lines.append(f"\n{c.perf_note}")
    if c.perf is not None:
        lines.append(f"\nperformance (median of the rounds; slower: median > +"
                     f"{c.perf_tolerance:.0%} and Mann-Whitney p <= {c.perf_alpha:g} over "
                     f"the rounds): {len(c.slower)} slower")
        for p in sorted(c.perf, key=lambda p: (p.verdict != "slower", -p.ratio))[:limit]:
            pv = "" if p.p_slower is None else f"p={p.p_slower:.2g}"
            lines.append(f"  {p.verdict:<6} x{p.ratio:.3f} {pv:<9} {p.baseline_median_s * 1e3:.3f}"
                         f" ms -> {p.run_median_s * 1e3:.3f} ms  {p.name}")
        if len(c.perf) > limit:
            lines.append(f"  ... {len(c.perf) - limit} more")
        if not c.perf:
            lines.append("  no benchmark in common")
    if c.disjoint:
        lines.append(f"\n0 of {c.total} checks matched: the runs tested different models or "
                     "cases? (a model is matched by its checkpoint's digest where the runs "
                     "recorded it; --ignore-param model_name matches across models)")
    lines.append(f"\nexit status {c.exit_code}: " + (
        "nothing matched" if c.disjoint else
        "something newly fails" if c.newly_failing else
        f"{len(c.slower)} benchmark(s) slower" if c.slower else "nothing newly fails"))
    return "\n".join(lines)
