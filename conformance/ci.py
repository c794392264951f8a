"""The glue tox and CI runners call: `python -m conformance.ci COMMAND`.

  job-start NAME        begin job NAME afresh (reports/NAME/: its runs, its scoreboard;
                        see conformance/jobs.py). tox runs it first in every environment.
  build                 build InfiniCore for the device in $INFINILM_DEVICE (its backend,
                        default cpu), unless INFINI_ROOT names a build
  upstream -- COMMAND   run COMMAND on upstream InfiniCore built from
                        $INFINILM_UPSTREAM_SOURCE. Opt-in: without that variable it prints
                        "upstream: not configured" and exits 0, under CI too; set to a path
                        that does not exist, it fails.

Exit status: COMMAND's (or the build's) status; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

UPSTREAM_ENV = "INFINILM_UPSTREAM_SOURCE"
DEVICE_ENV = "INFINILM_DEVICE"


# This project's layout: the upstream snapshot beside the checkout (.ci/run points the
# variable at it).
PROJECT_UPSTREAM = Path(__file__).resolve().parents[1].parent / "shared" / "infinicore"
NOT_CONFIGURED = (f"unsupported: upstream InfiniCore not configured ({UPSTREAM_ENV} is not "
                  "set and there is no ../shared/infinicore): set it to an upstream source "
                  "tree or tarball to check upstream too")


def upstream_source() -> Path | None:
    """The upstream source the tests read, by the upstream run's rule: $INFINILM_UPSTREAM_
    SOURCE when set (a path that does not exist is returned as is: the caller fails on it,
    as the run does), else this project's ../shared/infinicore where it exists, else None:
    not configured, which is not an error, under CI too (plain `tox` on any clone)."""
    src = os.environ.get(UPSTREAM_ENV, "").strip()
    if src:
        return Path(src).expanduser()
    return PROJECT_UPSTREAM if PROJECT_UPSTREAM.exists() else None


def _build_command(backend: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "infinilm_models.runtime.build", "--backend", backend,
            *extra]


def device_backend(device: str) -> str:
    """The build backend of a device name (`nvidia:1` -> nvidia; aliases as the runtime
    parses them)."""
    from infinilm_models.runtime.device import Device

    return Device.parse(device).type


def upstream(command: list[str], backend: str, ops: str,
             source: str | None = None) -> int:
    src = (os.environ.get(UPSTREAM_ENV, "") if source is None else source).strip()
    if not src:
        print(f"upstream: not configured ({UPSTREAM_ENV} is not set): the run on upstream "
              f"InfiniCore is left out. Set {UPSTREAM_ENV} to an InfiniCore source tree or "
              "tarball to run it (this project's .ci/run sets ../shared/infinicore).",
              flush=True)
        return 0
    path = Path(src).expanduser()
    if not path.exists():
        print(f"error: {UPSTREAM_ENV}={src}: no such file or directory (an InfiniCore source "
              f"tree or tarball; unset {UPSTREAM_ENV} to leave the upstream run out)",
              file=sys.stderr)
        return 1
    print(f"upstream: {UPSTREAM_ENV}={src}", flush=True)
    cmd = _build_command(backend, "--missing-source", "error", "--ops", ops, "--source",
                         str(path))
    if command:
        cmd += ["--", *command]
    return subprocess.run(cmd).returncode


def build(device: str | None) -> int:
    device = device or os.environ.get(DEVICE_ENV, "") or "cpu"
    try:
        backend = device_backend(device)
    except ValueError as e:
        print(f"error: {DEVICE_ENV}={device}: {e}", file=sys.stderr)
        return 2
    return subprocess.run(_build_command(backend, "--unless-infini-root")).returncode


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, command = argv[:at], argv[at + 1:]
    p = argparse.ArgumentParser(prog="python -m conformance.ci",
                                description="CI glue of the conformance suite (tox calls it).")
    sub = p.add_subparsers(dest="what", required=True, metavar="COMMAND")
    j = sub.add_parser("job-start", help="begin a job afresh: reports/NAME/")
    j.add_argument("name")
    j.add_argument("--report-dir", type=Path, default=Path("reports"),
                   help="where run directories are written (default: reports)")
    b = sub.add_parser("build", help=f"build InfiniCore for ${DEVICE_ENV} (default cpu)")
    b.add_argument("--device", default=None, help=f"device name (default: ${DEVICE_ENV} or cpu)")
    u = sub.add_parser("upstream", help=f"run `-- COMMAND` on upstream InfiniCore built from "
                                        f"${UPSTREAM_ENV}; not configured: exit 0")
    u.add_argument("--backend", default="cpu", help="backend to build (default cpu)")
    u.add_argument("--ops", default="harness", help="ops to build (default harness)")
    args = p.parse_args(argv)
    if args.what == "job-start":
        from .jobs import start

        try:
            print(f"job {args.name}: {start(args.report_dir, args.name)}")
        except (ValueError, OSError) as e:
            print(f"error: job-start: {e}", file=sys.stderr)
            return 2
        return 0
    if args.what == "build":
        return build(args.device)
    return upstream(command, args.backend, args.ops)


if __name__ == "__main__":
    sys.exit(main())
