"""A build request, checked where it enters: the backend (any device name or alias), the
source, the prefix and the options. Both building and `--print-config` start here."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .backends import parse_xmake_option
from .errors import BuildError
from .ops import check_ops
from .patches import check_cuda_arch
from .prefix import BACKEND_ALIASES, BACKENDS, canonical_backend, default_prefix
from .recipe import cudnn_key, pypi_source_key, recipe_digest
from .source import Source, SourceError, resolve
from .vendor import check_ccl


def check_backend(name: str) -> str:
    """The backend `name` stands for (a backend, or an alias such as cuda or sugon)."""
    backend = canonical_backend(str(name))
    if backend not in BACKENDS:
        aliases = ", ".join(f"{a}={b}" for a, b in sorted(BACKEND_ALIASES.items()))
        raise BuildError(f"--backend {name!r}: unknown backend; backends: "
                         f"{', '.join(BACKENDS)} (aliases: {aliases})")
    return backend


@dataclass(frozen=True)
class Request:
    backend: str  # one of BACKENDS
    source: Source | None  # None: the PyPI sdist, fetched when needed
    prefix: Path
    cuda_arch: str = "native"
    ccl: bool = False
    ops: str = "auto"
    xmake_options: tuple[tuple[str, str], ...] = ()

    @property
    def source_key(self) -> str:
        return self.source.key if self.source is not None else pypi_source_key()

    def digest(self) -> str:
        """The recipe digest this request's stamp must carry (see recipe_digest)."""
        return recipe_digest(self.backend, self.cuda_arch, self.ccl, self.source_key,
                             self.ops, cudnn_key(self.source_key, self.backend),
                             self.xmake_options)


def make_request(backend: str, prefix: Path | None = None, *,
                 source: Source | Path | None = None, cuda_arch: str = "native",
                 ccl: bool = False, ops: str = "auto",
                 xmake_options: Iterable[str | tuple[str, str]] = ()) -> Request:
    """A checked Request: every bad value is a BuildError of one line naming it."""
    backend = check_backend(backend)
    check_cuda_arch(cuda_arch)
    check_ops(ops)
    check_ccl(backend, ccl)
    options = tuple(parse_xmake_option(o if isinstance(o, str) else "=".join(o))
                    for o in xmake_options)
    if source is not None and not isinstance(source, Source):
        try:
            source = resolve(Path(source))
        except SourceError as e:
            raise BuildError(str(e)) from None
    prefix = (prefix or default_prefix(backend, source)).resolve()
    return Request(backend, source, prefix, cuda_arch, ccl, ops, options)
