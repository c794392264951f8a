"""The environment table of a report (which InfiniCore, device, versions, where each side
ran) and the performance tables (each check's own perf sample, pytest-benchmark's)."""

from __future__ import annotations

from typing import Any

from conformance.record import CheckRecord, RunRecord

from .format import fmt_number


def environment_rows(run: RunRecord) -> list[tuple[str, object]]:
    env = run.environment
    build = env.get("infinicore_build") or {}
    hashes = env.get("library_sha256") or {}
    ident = env.get("infinicore") or {}
    rows: list[tuple[str, object]] = [
        ("InfiniCore", run.build_label),
        ("InfiniCore source", ", ".join(f"{k}={v}" for k, v in (ident.get("source") or {}).items()
                                        if v not in (None, "") and k not in ("label", "key"))),
        ("InfiniCore exports", f"{ident.get('exported_functions', '?')} functions, "
                               f"{len(ident.get('exported_ops') or [])} ops, sha256 of the "
                               f"list {ident.get('exports_digest', '?')}" if ident else None),
        ("InfiniCore version string", env.get("infinicore_version")
         or build.get("infinicore_version")),
        ("backend", env.get("backend") or build.get("backend")),
        ("device under test", env.get("infini_device")),
        ("device name", env.get("device_name")),
        ("INFINI_ROOT (loaded)", env.get("infini_root") or env.get("infini_root_error")),
        ("$INFINI_ROOT", env.get("infini_root_env")),
    ]
    rows += [(f"sha256 {lib}", h) for lib, h in sorted(hashes.items())]
    if build:
        rows.append(("InfiniCore build", ", ".join(
            f"{k}={build[k]}" for k in ("recipe", "sdist_sha256", "flags", "patches",
                                        "built_at") if k in build)))
        left_out = (build.get("ops") or {}).get("left_out") or {}
        if left_out:
            rows.append(("ops left out of the build", ", ".join(sorted(left_out))))
    rows.append(("known defects", env.get("known_defects_scope")))
    where = env.get("placement") or {}
    probe = where.get("probe") or {}
    rows += [("ours ran on", where.get("ours")), ("reference ran on", where.get("reference"))]
    rows.append(("golden", env.get("golden")))
    if probe:
        rows.append(("torch device probe", f"InfiniCore's tests map {probe.get('infini_device')}"
                     f" to {where.get('torch_device_mapped')}: {probe.get('outcome')}"
                     + (" (CPU torch against an accelerator)"
                        if where.get("cpu_reference_for_accelerator") else "")))
    rows.append(("reference cache", env.get("reference_cache")))
    rows.append(("threads", env.get("threads")))
    rows += [
        ("torch", env.get("torch_version")), ("transformers", env.get("transformers_version")),
        ("numpy", env.get("numpy_version")), ("python", env.get("python")),
        ("platform", env.get("platform")), ("project git commit", env.get("git_commit")),
        ("command line", env.get("command_line")), ("started", run.started_at),
        ("duration", f"{fmt_number(run.duration_s, 4)} s"),
        ("pytest exit status", run.pytest_exit_status),
        ("planned checks", run.planned), ("dtypes", ", ".join(run.dtypes)),
        ("tolerance files", ", ".join(run.tolerance_sources)),
    ]
    return [(k, "—" if v in (None, "") else v) for k, v in rows]


def perf_rows(records: list[CheckRecord]) -> tuple[list[str], list[dict]]:
    """Every check's perf sample (the benchmarks' own measurements), as one table."""
    rows, columns = [], {}
    for r in records:
        p = r.perf
        if p is None:
            continue
        values: dict[str, Any] = {"group": p.group, "impl": p.impl, **p.labels, **p.values}
        for k in values:
            columns.setdefault(k, None)
        rows.append({"nodeid": r.nodeid, "status": r.status, "values": values})
    return list(columns)[:16], rows


def benchmarks(perf: Any) -> list[dict]:
    """pytest-benchmark entries of the run's `perf` that carry their statistics."""
    items = perf.get("benchmarks") if isinstance(perf, dict) else None
    return [b for b in items or [] if isinstance(b, dict) and isinstance(b.get("stats"), dict)
            and all(isinstance(b["stats"].get(k, 0), (int, float))
                    for k in ("mean", "median", "min", "stddev"))]
