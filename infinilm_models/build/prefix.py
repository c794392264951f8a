"""Where InfiniCore builds live: all that the runtime imports from the build tool.

The cache folder, a backend's default prefix, the stamp a build leaves in it, a file
digest, and the backend names with the aliases devices go by, so that any device name
finds its build and the runtime's "not found" message names a command that builds it.
Standard library only: loading InfiniCore must not import the build tool.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .source import Source

INFINICORE_VERSION = "0.1.0"  # the PyPI release: the default source
STAMP_NAME = ".infinilm-build.json"

# InfiniCore's device backends, in infiniDevice_t order (upstream include/infinicore.h),
# by the names this project gives them.
BACKENDS = ("cpu", "nvidia", "cambricon", "ascend", "metax", "moore", "iluvatar", "kunlun",
            "hygon", "qy", "ali")
# Other names of the same backends: 0.1.0 calls Hygon "sugon"; the rest are the device
# kinds users type (InfiniLM's --device, torch's device names, the vendors' own words).
BACKEND_ALIASES = {"cuda": "nvidia", "gpu": "nvidia", "mlu": "cambricon", "npu": "ascend",
                   "musa": "moore", "xpu": "kunlun", "sugon": "hygon", "dcu": "hygon",
                   "ppu": "ali"}
# What the default source can build (its xmake.lua's device options; a test reads them).
PYPI_BACKENDS = BACKENDS[:9]


def canonical_backend(name: str) -> str:
    """The backend a device name or alias stands for ("cuda" -> "nvidia", "sugon" ->
    "hygon"); a name that is neither comes back lower-cased, for the caller to refuse."""
    name = name.strip().lower()
    return BACKEND_ALIASES.get(name, name)


def cache_home() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "infinilm-models"


def default_prefix(backend: str, source: Source | None = None) -> Path:
    """Where `build` installs by default and where library discovery looks second: one
    prefix per source identity and backend (0.1.0 keeps its name of earlier releases).
    Aliases share their backend's prefix: a "cuda" device finds the nvidia build."""
    slug = source.slug if source is not None else INFINICORE_VERSION
    return cache_home() / f"infinicore-{slug}-{canonical_backend(backend)}"


def read_stamp(prefix: Path) -> dict | None:
    """The stamp `build` wrote into `prefix` (what was built, from what, how); None when
    there is none or it is unreadable (a vendor's own build)."""
    try:
        stamp = json.loads((prefix / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_command(backend: str) -> str:
    """The command that builds the libraries for `backend` (any device name or alias),
    quoted for a message, with what else it needs where the default source lacks it."""
    name = canonical_backend(backend)
    command = f"python -m infinilm_models.build --backend {name}"
    if name in BACKENDS and name not in PYPI_BACKENDS:
        return (f"`{command} --source PATH` (PATH: an InfiniCore source tree or tarball with "
                f"the {name} backend; the default source, InfiniCore {INFINICORE_VERSION}, "
                "has none), then set INFINI_ROOT to the prefix it prints")
    return f"`{command}`"
