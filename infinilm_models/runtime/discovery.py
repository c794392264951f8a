"""Where InfiniCore's libraries are looked for: INFINI_ROOT, else the default prefix of
the chosen backend (the device's, or $INFINILM_BACKEND). Reading a build's record
(capabilities.py) and loading it (library.py) both start here; neither imports the other
for it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..build.prefix import build_command, default_prefix


class LibraryNotFound(RuntimeError):
    pass


_loaded: Path | None = None  # the prefix library.load() loaded (one build per process)

# The backend a program chose (the conformance plugin from --infini-device, the CLI from
# --device); None: $INFINILM_BACKEND, else cpu. Only the default prefix depends on it.
_default_backend: str | None = None


def set_default_backend(name: str | None) -> None:
    """Choose the backend whose default prefix (`build.default_prefix`) is searched when
    INFINI_ROOT is not set: `--infini-device nvidia` then finds the nvidia build without
    INFINILM_BACKEND. Precedence: INFINI_ROOT > INFINILM_BACKEND > this > "cpu" (the
    environment is what the user typed last, a program's choice only fills the gap).
    `None` forgets the choice. After InfiniCore is loaded, choosing a backend that would
    resolve to another prefix raises RuntimeError: one process holds one build.
    """
    global _default_backend
    if name is not None and (not isinstance(name, str) or not name.isidentifier()):
        raise ValueError(f"backend name must be a word such as 'cpu' or 'nvidia', got {name!r}")
    previous = _default_backend
    _default_backend = name.lower() if name else None
    if _loaded is not None:
        wanted = candidate_roots()[0][1]
        if wanted.resolve() != _loaded.resolve():
            _default_backend = previous
            raise RuntimeError(f"InfiniCore is already loaded from {_loaded}; backend "
                               f"{name!r} would need {wanted} (one build per process)")


def default_backend() -> str:
    """The backend whose default prefix is searched: $INFINILM_BACKEND, else the one set
    with `set_default_backend`, else "cpu"."""
    return os.environ.get("INFINILM_BACKEND") or _default_backend or "cpu"


def candidate_roots() -> list[tuple[str, Path]]:
    """Where we look, in order, with the reason each place is considered."""
    roots: list[tuple[str, Path]] = []
    if os.environ.get("INFINI_ROOT"):
        roots.append(("INFINI_ROOT", Path(os.environ["INFINI_ROOT"]).expanduser()))
    backend = default_backend()
    if os.environ.get("INFINILM_BACKEND"):
        why = f"default prefix for INFINILM_BACKEND={backend}"
    elif _default_backend:
        why = f"default prefix for backend {backend!r} (chosen by the device)"
    else:
        why = f"default prefix for backend {backend!r}"
    roots.append((why, default_prefix(backend)))
    return roots


def loaded_root() -> Path | None:
    """The prefix of the loaded build; None before `load()`."""
    return _loaded


def mark_loaded(root: Path) -> None:
    """library.load() loaded the build at `root`: one process holds one build."""
    global _loaded
    _loaded = root


def find_root() -> Path:
    looked = []
    for why, root in candidate_roots():
        if (root / "lib" / "libinfiniop.so").is_file():
            return root
        looked.append(f"  {root}/lib/libinfiniop.so ({why})")
        if why == "INFINI_ROOT":
            # An explicit INFINI_ROOT that is wrong must not silently fall back elsewhere.
            break
    raise LibraryNotFound(
        "InfiniCore libraries not found. Looked for:\n" + "\n".join(looked)
        + f"\nBuild them with {build_command(default_backend())}, or set INFINI_ROOT to an "
        "existing InfiniCore install prefix."
    )


