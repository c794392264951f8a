"""Which InfiniCore source a build comes from, and its identity.

A source is the PyPI sdist (`infinicore` 0.1.0, the default), a tarball of any source
tree (a `git archive`, a vendor's release), or a source directory. Its identity is what
a build stamp, results.json and the known-defect table name a build by:

    pypi:0.1.0          the PyPI release (an sdist whose PKG-INFO says Name: infinicore)
    git:<commit>        a clean git tree, or a `git archive` tarball (its pax header)
    sha256:<digest>     anything else: the tarball's bytes, or the tree's files

Nothing here builds; `install.py` unpacks and compiles what `resolve` identified.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .prefix import sha256_file

TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")
# Build outputs and VCS state of a source directory: neither identity nor input.
TREE_IGNORE = frozenset({".git", ".xmake", "build", "__pycache__", ".venv"})


class SourceError(ValueError):
    """A --source that is not an InfiniCore source tree; the message says why."""


@dataclass(frozen=True)
class Source:
    kind: str  # "pypi": the PyPI sdist; "tarball"; "tree": a source directory
    path: Path
    sha256: str  # the tarball's bytes, or the tree's file list and contents
    version: str | None = None  # what the tree says of itself (PKG-INFO, pyproject.toml)
    git_commit: str | None = None
    git_dirty: bool | None = None
    top_dir: str | None = None  # a tarball's top directory ("" when it has none)

    @property
    def key(self) -> str:
        """The build's identity for matching (known defects, compare): see the module."""
        if self.kind == "pypi":
            return f"pypi:{self.version}"
        if self.git_commit and not self.git_dirty:
            return f"git:{self.git_commit}"
        return f"sha256:{self.sha256}"

    @property
    def slug(self) -> str:
        """A short name for the default prefix: 0.1.0, git-2cec6ce6, src-0123abcd4567."""
        if self.kind == "pypi":
            return str(self.version)
        if self.git_commit and not self.git_dirty:
            return f"git-{self.git_commit[:8]}"
        return f"src-{self.sha256[:12]}"

    @property
    def label(self) -> str:
        if self.kind == "pypi":
            return f"InfiniCore {self.version} (PyPI sdist)"
        what = {"tarball": "tarball", "tree": "source tree"}[self.kind]
        rev = f"git {self.git_commit[:8]}" if self.git_commit else f"sha256 {self.sha256[:12]}"
        if self.git_dirty:
            rev += " + local changes"
        return f"InfiniCore {rev} ({what} {self.path.name})"

    def describe(self) -> dict:
        return {"kind": self.kind, "key": self.key, "label": self.label,
                "path": str(self.path), "sha256": self.sha256, "version": self.version,
                "git_commit": self.git_commit, "git_dirty": self.git_dirty,
                "top_dir": self.top_dir}


def is_tarball(path: Path) -> bool:
    return path.name.endswith(TARBALL_SUFFIXES)


def resolve(path: Path) -> Source:
    """Identify `path`: a tarball, a source directory, or a directory holding exactly one
    tarball (such as a folder a snapshot was dropped into, with its README)."""
    path = path.expanduser().resolve()
    if not path.exists():
        raise SourceError(f"--source {path}: no such file or directory")
    if path.is_dir():
        if (path / "xmake.lua").is_file():
            return _tree(path)
        tarballs = sorted(p for p in path.iterdir() if p.is_file() and is_tarball(p))
        if len(tarballs) == 1:
            return _tarball(tarballs[0])
        found = ", ".join(p.name for p in tarballs) or "none"
        raise SourceError(f"--source {path}: not an InfiniCore source tree (no xmake.lua) "
                          f"and not a folder with one tarball (tarballs: {found})")
    if is_tarball(path):
        return _tarball(path)
    raise SourceError(f"--source {path}: expected a source directory or a tarball "
                      f"({', '.join(TARBALL_SUFFIXES)})")


def _tarball(path: Path) -> Source:
    try:
        with tarfile.open(path) as tar:
            names = tar.getnames()
            commit = (tar.pax_headers or {}).get("comment", "")
            top = _top_dir(names)
            prefix = f"{top}/" if top else ""
            if f"{prefix}xmake.lua" not in names:
                raise SourceError(f"--source {path}: not an InfiniCore source tree (no "
                                  f"{prefix}xmake.lua in the tarball)")
            pkg_info = _read_member(tar, f"{prefix}PKG-INFO")
            pyproject = _read_member(tar, f"{prefix}pyproject.toml")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise SourceError(f"--source {path}: cannot be read as a tarball: {e}") from None
    name, version = _pkg_info(pkg_info)
    # `git archive` writes the commit into the pax global header's comment.
    commit = commit if re.fullmatch(r"[0-9a-f]{40}", commit or "") else None
    kind = "pypi" if name == "infinicore" and version else "tarball"
    return Source(kind=kind, path=path, sha256=sha256_file(path),
                  version=version or _pyproject_version(pyproject), git_commit=commit,
                  git_dirty=False if commit else None, top_dir=top)


def _top_dir(names: list[str]) -> str:
    tops = {n.split("/", 1)[0] for n in names if n and not n.startswith("./")}
    nested = all("/" in n or n in tops for n in names)
    return tops.pop() if len(tops) == 1 and nested else ""


def _read_member(tar: tarfile.TarFile, name: str) -> str | None:
    try:
        f = tar.extractfile(name)
    except KeyError:
        return None
    return f.read().decode("utf-8", "replace") if f is not None else None


def _pkg_info(text: str | None) -> tuple[str | None, str | None]:
    if not text:
        return None, None
    fields = dict(re.findall(r"^(Name|Version):\s*(\S+)", text, re.M))
    return (fields.get("Name") or "").lower() or None, fields.get("Version")


def _pyproject_version(text: str | None) -> str | None:
    m = re.search(r'^version\s*=\s*"([^"]+)"', text or "", re.M)
    return m.group(1) if m else None


def _tree(path: Path) -> Source:
    h = hashlib.sha256()
    for rel in tree_files(path):
        h.update(rel.encode() + b"\0" + sha256_file(path / rel).encode() + b"\n")
    pyproject = path / "pyproject.toml"
    commit, dirty = _git_state(path)
    return Source(kind="tree", path=path, sha256=h.hexdigest(),
                  version=_pyproject_version(pyproject.read_text()
                                             if pyproject.is_file() else None),
                  git_commit=commit, git_dirty=dirty)


def tree_files(root: Path) -> list[str]:
    """The tree's regular files, relative and sorted, build outputs and .git left out."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in TREE_IGNORE)
        for f in filenames:
            p = Path(dirpath) / f
            if p.is_file() and not p.is_symlink():
                out.append(p.relative_to(root).as_posix())
    return sorted(out)


def _git_state(path: Path) -> tuple[str | None, bool | None]:
    """(commit, has local changes) of a git checkout at `path`; (None, None) otherwise."""
    if not (path / ".git").exists():
        return None, None
    try:
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=20).stdout.strip()
        status = subprocess.run(["git", "-C", str(path), "status", "--porcelain",
                                 "--untracked-files=no"],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None, None
    if not re.fullmatch(r"[0-9a-f]{40}", commit) or status.returncode != 0:
        return None, None
    return commit, bool(status.stdout.strip())
