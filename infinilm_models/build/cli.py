"""The command line: `python -m infinilm_models.build` (and its old name,
`python -m infinilm_models.runtime.build`)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from .config import describe
from .errors import BuildError, log
from .install import build
from .prefix import BACKEND_ALIASES, BACKENDS, INFINICORE_VERSION, cache_home
from .request import make_request

PROG = "python -m infinilm_models.build"


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, usage="%(prog)s [options] [-- COMMAND ...]",
        description=(
            "Build InfiniCore's C libraries (libinfinirt, libinfiniop, libinfiniccl) with "
            "xmake, offline apart from the package index: from the PyPI sdist "
            f"infinicore=={INFINICORE_VERSION} (default) or from any source tree or tarball "
            "(--source), for any InfiniCore backend. Idempotent: an up-to-date prefix is left "
            "alone. With `-- COMMAND`, run COMMAND afterwards with INFINI_ROOT set to the "
            "build. A user with their own InfiniCore build skips this and sets INFINI_ROOT."),
        epilog="Every adaptation of the recipe to the tree (patches, stand-ins, ops left out) "
               "is printed and recorded in the prefix's .infinilm-build.json, with the "
               "backend, its xmake option and the --xmake-option values.")
    aliases = ", ".join(f"{a}={b}" for a, b in sorted(BACKEND_ALIASES.items()))
    parser.add_argument("--backend", default="cpu", metavar="NAME",
                        help=f"device backend to compile: {', '.join(BACKENDS)}, or an alias "
                        f"({aliases}); every device backend also includes cpu. Its xmake "
                        "option is read from the tree's xmake.lua (e.g. --metax-gpu; 0.1.0 "
                        "builds hygon as --sugon-dcu). Default: cpu")
    parser.add_argument("--xmake-option", action="append", default=[], metavar="KEY=VALUE",
                        help="one more `xmake f --KEY=VALUE` (repeatable): an option the tree "
                        "declares (use-mc=y, hygon-arch=gfx936, iluvatar-arch=ivcore20) or one "
                        "of xmake's own (toolchain, sdk, cuda, ...); it replaces the recipe's "
                        "value of the same key and is part of the build's digest and stamp")
    parser.add_argument("--print-config", action="store_true",
                        help="print the backend, source, prefix, configure line, needs and the "
                        "recipe's adaptations for this request, and exit 0 without building")
    parser.add_argument("--source", type=Path, default=None,
                        help="an InfiniCore source directory, a tarball of one (any top "
                        "directory; a `git archive` names its commit), or a folder holding "
                        "one tarball (default: the PyPI sdist)")
    parser.add_argument("--sdist", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", type=Path, default=None,
                        help=f"install prefix (default: {cache_home()}/infinicore-<source>-"
                        "<backend>, one per source identity)")
    parser.add_argument("--ops", default="auto",
                        help="which operators to build: all, harness (the ops this project "
                        "binds and checks), or a comma-separated list of op folders; default "
                        "auto: harness for NVIDIA builds of trees other than the PyPI release "
                        "(upstream's full NVIDIA op set does not compile under CUDA 13), all "
                        "otherwise")
    parser.add_argument("--missing-source", choices=("auto", "error", "skip"), default="error",
                        help="when --source does not exist: fail (error, default), or say so and "
                        "exit 0 without building or running COMMAND (skip); auto: error where "
                        "the CI variable is set, skip elsewhere")
    parser.add_argument("-j", "--jobs", type=int, default=None, help="parallel compile jobs")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--keep-build-dir", action="store_true",
                        help="keep the temporary source/build tree for debugging")
    parser.add_argument("--print-prefix", action="store_true",
                        help="print only the prefix on stdout at the end (for scripts)")
    parser.add_argument("--cuda-arch", default=os.environ.get("INFINILM_CUDA_ARCH", "native"),
                        help="GPU code to compile for the nvidia backend, e.g. sm_90 for H100/H200 "
                        "(default: $INFINILM_CUDA_ARCH or 'native', xmake's probe of the local "
                        "GPU; where that probe fails, only PTX is built and each process JITs "
                        "its kernels for about a minute). Other vendors' arch options go "
                        "through --xmake-option")
    parser.add_argument("--ccl", action="store_true",
                        help="also build InfiniCCL, the collectives for tensor parallelism "
                        "(nvidia only: NCCL from the pip package nvidia-nccl-cu13 or -cu12 of "
                        "this Python, or $NCCL_ROOT); a build with it also serves requests "
                        "without")
    parser.add_argument("--unless-infini-root", action="store_true",
                        help="do nothing when INFINI_ROOT names an existing InfiniCore install "
                        "(a vendor's own build); used by tox and CI")
    return parser


def _missing_source_action(choice: str) -> str:
    if choice != "auto":
        return choice
    # CI systems set CI (GitHub, GitLab, ...): there a missing source must fail the job.
    return "error" if os.environ.get("CI", "").lower() not in ("", "0", "false") else "skip"


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, command = argv[:at], argv[at + 1:]
    args = _parser(prog).parse_args(argv)
    root = os.environ.get("INFINI_ROOT")
    if args.unless_infini_root and root and not args.print_config:
        if not (Path(root) / "lib" / "libinfiniop.so").is_file():
            print(f"error: INFINI_ROOT={root} has no lib/libinfiniop.so", file=sys.stderr)
            return 1
        log(f"INFINI_ROOT={root} is set: using that build, not building")
        return _exec(command, Path(root))
    source_path = args.source or args.sdist
    if source_path is not None and not source_path.expanduser().exists():
        if _missing_source_action(args.missing_source) == "skip":
            log(f"SKIPPED: no InfiniCore source at {source_path} (nothing built"
                + (f", not run: {' '.join(command)}" if command else "") + "); pass --source "
                "to a tree or tarball to build it")
            return 0
    try:
        if args.print_config:
            req = make_request(args.backend, args.prefix, source=source_path,
                               cuda_arch=args.cuda_arch, ccl=args.ccl, ops=args.ops,
                               xmake_options=args.xmake_option)
            print("\n".join(describe(req)))
            return 0
        out = build(args.backend, args.prefix, source=source_path, jobs=args.jobs,
                    force=args.force, keep_build_dir=args.keep_build_dir,
                    cuda_arch=args.cuda_arch, ccl=args.ccl, ops=args.ops,
                    xmake_options=args.xmake_option)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.print_prefix:
        print(out)
    elif not command:
        log(f"use it with: export INFINI_ROOT={out}")
    return _exec(command, out)


def _exec(command: list[str], prefix: Path) -> int:
    """Run `command` with INFINI_ROOT=prefix; its exit status is ours."""
    if not command:
        return 0
    log(f"running with INFINI_ROOT={prefix}: {' '.join(command)}")
    try:
        return subprocess.run(command, env={**os.environ, "INFINI_ROOT": str(prefix)}).returncode
    except OSError as e:
        print(f"error: cannot run {command[0]!r}: {e}", file=sys.stderr)
        return 127
