"""infinilm-conformance: report | compare | merge | screenshot | baseline | bench-history.

Exit status: 0 success; 1 `compare` found something newly failing, a slower benchmark,
a red run against the last green one (or, with --fail-on-growth, an error grown past the
factor); 2 bad input (missing or corrupt results.json, unknown schema version, bad
arguments).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from conformance.record import RecordError, RunRecord, results_path
from conformance.results import atomic_write_text
from infinilm_models.arguments import OneLineParser, float_in, int_at_least, nonempty, output_file


def _window(value: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in value.split(","))
    except ValueError:
        w = h = 0
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected WIDTH,HEIGHT, positive integers")
    return w, h


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="infinilm-conformance",
        description="Reports of the InfiniCore LLaMA conformance suite, from the "
                    "results.json of each run (schema: conformance/report/SCHEMA.md).",
        epilog="exit status: 0 ok; 1 compare: something newly fails; 2 bad input")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("report", help="render RUN/index.html from RUN/results.json",
                       description="Render the self-contained HTML report of a run (pytest "
                                   "already does this at the end of every run).")
    r.add_argument("run", type=nonempty,
                   help="run directory (e.g. reports/latest) or its results.json")
    r.add_argument("-o", "--output", type=output_file, help="HTML file (default: RUN/index.html)")
    r.add_argument("--no-plots", action="store_true", help="skip the per-layer plots")

    c = sub.add_parser("compare", help="a run against a baseline run",
                       description="Newly failing (failed, crashed, not run, error) and "
                                   "newly passing checks, error metrics grown by more than "
                                   "--factor, and performance changes when benchmarks are "
                                   "present (RUN/benchmark.json by default). Exit 1 when "
                                   "something newly fails or a benchmark is slower. With "
                                   "--baseline last-green: against the last green run of the "
                                   "same suite, device, build and machine in the baseline "
                                   "store, which is then brought up to date (see "
                                   "conformance/report/baselines.py).")
    c.add_argument("run", type=nonempty, help="run directory or results.json; or a job folder "
                               "(reports/<job>/): each of its runs")
    c.add_argument("baseline", nargs="?", default=None,
                   help="baseline run directory or results.json (or use --baseline)")
    c.add_argument("--baseline", dest="baseline_opt", metavar="last-green|PATH",
                   help="last-green: the store's last green run of this run's key; or a "
                        "baseline run directory")
    c.add_argument("--baseline-store", type=Path, default=None, metavar="DIR",
                   help="the baseline store (default: $INFINILM_BASELINE_STORE or "
                        "~/.cache/infinilm-models/baselines)")
    c.add_argument("--suite", default=None,
                   help="the store key's suite (default: the run's job name, else 'default')")
    c.add_argument("--no-record", action="store_true",
                   help="with last-green: compare only, store nothing")
    c.add_argument("--factor", type=float_in(1.0), default=2.0,
                   help="report error metrics of the comparisons (nmse, max_abs, mean_abs, "
                        "max_ulp, kl, rel_delta; ours, not transformers' reference_*) that "
                        "grew by more than this factor (default 2)")
    c.add_argument("--ignore-param", action="append", default=[], metavar="NAME", type=nonempty,
                   help="match checks ignoring this parameter, e.g. --ignore-param dtype to "
                        "compare an f32 run with a bf16 run (repeatable)")
    c.add_argument("--benchmark", metavar="FILE", type=nonempty,
                   help="pytest-benchmark JSON of the run "
                   "(default: results.json 'perf', else RUN/benchmark.json)")
    c.add_argument("--baseline-benchmark", metavar="FILE", type=nonempty,
                   help="pytest-benchmark JSON of the baseline (same defaults)")
    c.add_argument("--perf-tolerance", type=float_in(0.0), default=0.10,
                   help="a benchmark is slower when its median exceeds the baseline's by "
                        "more than this fraction (0.10) and the rank test agrees")
    c.add_argument("--perf-alpha", type=float_in(0.0), default=0.05,
                   help="level of the one-sided Mann-Whitney U test over the timed rounds "
                        "(0.05)")
    c.add_argument("--perf-any-partition", action="store_true",
                   help="compare benchmarks even of a different device, scale or build")
    c.add_argument("--fail-on-growth", action="store_true",
                   help="also exit 1 when an error grew past --factor")
    c.add_argument("--json", type=output_file, metavar="FILE",
                   help="also write the comparison as JSON")
    c.add_argument("--html", type=output_file, metavar="FILE", help="also write it as an HTML page")
    c.add_argument("--limit", type=int_at_least(0), default=40,
                   help="lines per section printed (40)")

    m = sub.add_parser("merge", help="several runs into one scoreboard page",
                       description="Backend x check matrix of several runs (cpu, nvidia, a "
                                   "vendor device...), linking each run's own report.")
    m.add_argument("runs", nargs="+", type=nonempty, help="run directories or results.json files")
    m.add_argument("-o", "--output", type=lambda v: Path(nonempty(v)), required=True,
                   help="directory for index.html and scoreboard.json")

    b = sub.add_parser("baseline", help="show the baseline store, or pin a run's benchmarks",
                       description="The baseline store of `compare --baseline last-green`. "
                                   "`show` lists its keys; `pin RUN` makes RUN's benchmarks "
                                   "the performance baseline of its key (the documented way "
                                   "to accept a slowdown, or a speedup, on purpose).")
    b.add_argument("action", choices=("show", "pin"))
    b.add_argument("run", nargs="?", help="pin: the run directory whose benchmarks to pin")
    b.add_argument("--baseline-store", type=Path, default=None, metavar="DIR",
                   help="(default: $INFINILM_BASELINE_STORE or "
                        "~/.cache/infinilm-models/baselines)")
    b.add_argument("--suite", default=None,
                   help="the key's suite (default: the run's job name, else 'default')")
    b.add_argument("--benchmark", metavar="FILE",
                   help="pin: the benchmark JSON (default: RUN/benchmark.json)")

    h = sub.add_parser("bench-history", help="benchmarks over commits, one HTML page",
                       description="One self-contained page from a baseline store's history: "
                                   "a plot per benchmark over commits, one line per (machine, "
                                   "device, build), regressions marked, each point linking "
                                   "to its run.")
    h.add_argument("store", nargs="?", type=Path, default=None,
                   help="the baseline store (default: $INFINILM_BASELINE_STORE or "
                        "~/.cache/infinilm-models/baselines)")
    h.add_argument("-o", "--output", type=Path, default=Path("reports/bench-history.html"),
                   help="HTML file (default: reports/bench-history.html)")

    s = sub.add_parser("screenshot", help="screenshot a report in headless Chromium",
                       description="Render RUN/index.html in headless Chromium and save "
                                   "the top of the page as RUN/index.png.")
    s.add_argument("run", type=nonempty, help="run directory, results.json or an HTML file")
    s.add_argument("-o", "--output", type=output_file, help="PNG file (default: next to the HTML)")
    s.add_argument("--window-size", default=(1400, 1800), type=_window,
                   help="WIDTH,HEIGHT (1400,1800)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (RecordError, ValueError, OSError) as e:
        print(f"infinilm-conformance {args.command}: error: {e}", file=sys.stderr)
        return 2


def _report(args) -> int:
    from .render import render_run

    started = time.perf_counter()
    out = render_run(args.run, args.output, plots=not args.no_plots)
    print(f"{out} (rendered in {time.perf_counter() - started:.2f} s)")
    return 0


def _store(args) -> Path:
    from .baselines import default_store

    return args.baseline_store or default_store()


def _compare(args) -> int:
    if args.baseline and args.baseline_opt:
        raise ValueError("give the baseline once: BASELINE or --baseline")
    baseline = args.baseline or args.baseline_opt
    if baseline is None:
        raise ValueError("no baseline: give BASELINE, or --baseline last-green")
    from conformance.jobs import is_job_dir, runs

    if is_job_dir(Path(args.run)):
        job = Path(args.run)
        found = runs(job.parent, job.name)
        if not found:
            raise ValueError(f"{job}: a job folder without a run that wrote results.json")
        codes = []
        for run in found:
            print(f"== {run.name}")
            codes.append(_compare_one(args, str(run), baseline))
        return max(codes)
    return _compare_one(args, args.run, baseline)


def _compare_one(args, run_path: str, baseline: str) -> int:
    if baseline == "last-green":
        if args.json or args.html:
            raise ValueError("--json/--html: give a baseline run, not last-green")
        from .gate import gate_run

        result = gate_run(run_path, _store(args), suite=args.suite, factor=args.factor,
                          fail_on_growth=args.fail_on_growth,
                          perf_tolerance=args.perf_tolerance, perf_alpha=args.perf_alpha,
                          benchmark=args.benchmark, baseline_benchmark=args.baseline_benchmark,
                          record=not args.no_record, ignore_params=tuple(args.ignore_param),
                          limit=args.limit)
        print("\n".join(result.lines))
        return result.exit_code
    from .benchfiles import perf_of
    from .compare import compare_runs
    from .comparetext import format_text

    run_src, base_src = results_path(run_path), results_path(baseline)
    run, base = RunRecord.load(run_src), RunRecord.load(base_src)
    run_perf = perf_of(run, run_src.parent, args.benchmark)
    base_perf = perf_of(base, base_src.parent, args.baseline_benchmark)
    result = compare_runs(run, base, args.factor, tuple(args.ignore_param), run_perf,
                          base_perf, args.perf_tolerance, args.perf_alpha,
                          args.perf_any_partition)
    # The files first: a summary that says "exit status 0" must not be followed by a
    # failure to write what was asked for.
    if args.json:
        atomic_write_text(args.json, json.dumps(result.to_dict(), indent=1) + "\n")
    if args.html:
        from .render import make_env

        atomic_write_text(args.html, make_env().get_template("compare.html.j2").render(c=result))
    print(format_text(result, args.limit))
    code = result.exit_code
    if args.fail_on_growth and result.grown:
        code = 1
    return code


def _merge(args) -> int:
    from .merge import merge_runs

    print(merge_runs(args.runs, args.output))
    return 0


def _baseline(args) -> int:
    from . import baselines

    store = _store(args)
    if args.action == "show":
        keys = sorted({p.parent for p in store.rglob("meta.json")}) if store.is_dir() else []
        if not keys:
            print(f"{store}: empty")
        for folder in keys:
            meta = baselines.read_meta(folder)
            print(f"{folder.relative_to(store)}: run {meta.get('run_id')} "
                  f"(commit {meta.get('git_commit')}, recorded {meta.get('recorded_at')})")
        return 0
    if not args.run:
        raise ValueError("baseline pin: give the run directory whose benchmarks to pin")
    from .benchfiles import partition, perf_of

    src = results_path(args.run)
    run = RunRecord.load(src)
    doc = perf_of(run, src.parent, args.benchmark)
    if doc is None:
        raise RecordError(f"{src.parent}: no benchmark.json (a run of conformance/perf with "
                          "timing on writes one)")
    key = baselines.key_of(run, args.suite)
    scale = partition(doc)["scale"]
    target = baselines.pin(store, key, run, src.parent, doc, scale)
    print(f"pinned {len(doc['benchmarks'])} benchmarks of run {run.run_id} at scale {scale} "
          f"as the performance baseline of {key.describe()}: {target}")
    return 0


def _history(args) -> int:
    from .baselines import default_store
    from .history import write_history

    store = args.store or default_store()
    out, series = write_history(store, args.output)
    print(f"{out}: {series} series")
    return 0


def _screenshot(args) -> int:
    from .browser import BrowserError, screenshot

    src = Path(args.run)
    html = src if src.suffix == ".html" else results_path(src).parent / "index.html"
    if not html.is_file():
        raise RecordError(f"{html}: no report here (run `infinilm-conformance report` first)")
    w, h = args.window_size
    try:
        print(screenshot(html, args.output or html.with_suffix(".png"), w, h))
    except BrowserError as e:
        print(f"infinilm-conformance screenshot: error: {e}", file=sys.stderr)
        return 2
    return 0


_COMMANDS = {"report": _report, "compare": _compare, "merge": _merge,
             "screenshot": _screenshot, "baseline": _baseline, "bench-history": _history}

if __name__ == "__main__":
    sys.exit(main())
