"""`python -m infinilm_models.runtime.build`: the build tool's old name, kept so that no
command breaks. The tool is `infinilm_models.build` (a package of its own); the runtime
imports only `infinilm_models.build.prefix`."""

from __future__ import annotations

import sys

from infinilm_models.build.cli import main as _main
from infinilm_models.build.errors import BuildError
from infinilm_models.build.install import build
from infinilm_models.build.prefix import cache_home, default_prefix, read_stamp, sha256_file
from infinilm_models.build.source import Source, is_tarball
from infinilm_models.build.vendor import find_cudnn, find_nccl


def main(argv: list[str] | None = None) -> int:
    return _main(argv, prog="python -m infinilm_models.runtime.build")


__all__ = ["BuildError", "Source", "build", "cache_home", "default_prefix", "find_cudnn",
           "find_nccl", "is_tarball", "main", "read_stamp", "sha256_file"]

if __name__ == "__main__":
    sys.exit(main())
