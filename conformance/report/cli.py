"""infinilm-conformance: report | compare | merge | screenshot.

Exit status: 0 success; 1 `compare` found something newly failing (or, with
--fail-on-growth, an error grown past the factor); 2 bad input (missing or corrupt
results.json, unknown schema version, bad arguments).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from conformance.record import RecordError, RunRecord, results_path
from conformance.results import atomic_write_text
from infinilm_models.arguments import OneLineParser, float_in, int_at_least, nonempty


def _out_path(value: str) -> Path:
    """A file to write: not empty, not an existing directory."""
    path = Path(nonempty(value))
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is a directory, not a file")
    return path


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
    r.add_argument("-o", "--output", type=_out_path, help="HTML file (default: RUN/index.html)")
    r.add_argument("--no-plots", action="store_true", help="skip the per-layer plots")

    c = sub.add_parser("compare", help="a run against a baseline run",
                       description="Newly failing (failed, crashed, not run, error) and "
                                   "newly passing checks, error metrics grown by more than "
                                   "--factor, and performance changes when benchmarks are "
                                   "present. Exit 1 when something newly fails.")
    c.add_argument("run", type=nonempty, help="run directory or results.json")
    c.add_argument("baseline", type=nonempty, help="baseline run directory or results.json")
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
                   help="relative band within which a mean time counts as unchanged (0.10)")
    c.add_argument("--fail-on-growth", action="store_true",
                   help="also exit 1 when an error grew past --factor")
    c.add_argument("--json", type=_out_path, metavar="FILE",
                   help="also write the comparison as JSON")
    c.add_argument("--html", type=_out_path, metavar="FILE", help="also write it as an HTML page")
    c.add_argument("--limit", type=int_at_least(0), default=40,
                   help="lines per section printed (40)")

    m = sub.add_parser("merge", help="several runs into one scoreboard page",
                       description="Backend x check matrix of several runs (cpu, nvidia, a "
                                   "vendor device...), linking each run's own report.")
    m.add_argument("runs", nargs="+", type=nonempty, help="run directories or results.json files")
    m.add_argument("-o", "--output", type=lambda v: Path(nonempty(v)), required=True,
                   help="directory for index.html and scoreboard.json")

    s = sub.add_parser("screenshot", help="screenshot a report in headless Chromium",
                       description="Render RUN/index.html in headless Chromium and save "
                                   "the top of the page as RUN/index.png.")
    s.add_argument("run", type=nonempty, help="run directory, results.json or an HTML file")
    s.add_argument("-o", "--output", type=_out_path, help="PNG file (default: next to the HTML)")
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


def _compare(args) -> int:
    from .compare import compare_runs, format_text, perf_of

    run_src, base_src = results_path(args.run), results_path(args.baseline)
    run, base = RunRecord.load(run_src), RunRecord.load(base_src)
    run_perf = perf_of(run, run_src.parent, args.benchmark)
    base_perf = perf_of(base, base_src.parent, args.baseline_benchmark)
    result = compare_runs(run, base, args.factor, tuple(args.ignore_param), run_perf,
                          base_perf, args.perf_tolerance)
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
             "screenshot": _screenshot}

if __name__ == "__main__":
    sys.exit(main())
