"""Getting a source in hand: the PyPI sdist from the package index, and a private copy of
any source to patch and build (never the user's own tree)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from .errors import BuildError, log
from .prefix import INFINICORE_VERSION
from .source import Source


def fetch_sdist(dest: Path) -> Path:
    """The sdist from the package index (pip honours the user's index configuration)."""
    dest.mkdir(parents=True, exist_ok=True)
    existing = sorted(dest.glob(f"infinicore-{INFINICORE_VERSION}.tar.gz"))
    if existing:
        return existing[0]
    log(f"downloading the infinicore=={INFINICORE_VERSION} sdist into {dest}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", f"infinicore=={INFINICORE_VERSION}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(f"infinicore-{INFINICORE_VERSION}.tar.gz"))
    if proc.returncode != 0 or not found:
        raise BuildError(
            "could not download the infinicore sdist (" + " ".join(cmd) + "):\n"
            + (proc.stderr or proc.stdout)[-2000:]
            + "\nPass --source PATH to build from a local copy or another tree."
        )
    return found[0]


def unpack(source: Source, work: Path) -> Path:
    """A private copy of the source under `work` (sources are patched; never the user's)."""
    if source.kind == "tree":
        dest = work / "src-tree"
        shutil.copytree(source.path, dest, symlinks=True,
                        ignore=shutil.ignore_patterns(".git", ".xmake", "build"))
        return dest
    with tarfile.open(source.path) as tar:
        # The data filter refuses absolute paths and links out of the tree.
        if hasattr(tarfile, "data_filter"):
            tar.extractall(work / "src-tar", filter="data")
        else:  # pragma: no cover - Python < 3.10.12
            tar.extractall(work / "src-tar")
    return work / "src-tar" / source.top_dir if source.top_dir else work / "src-tar"
