"""Build InfiniCore's C libraries from any source, for any backend, offline, into a prefix.

    python -m infinilm_models.build --backend cpu             # PyPI sdist 0.1.0
    python -m infinilm_models.build --backend nvidia --ccl    # with InfiniCCL (NCCL)
    python -m infinilm_models.build --backend metax --source ~/InfiniCore --print-config
    python -m infinilm_models.build --source T -- pytest ...  # then run with it

(`python -m infinilm_models.runtime.build` is the same command under its old name.)

prefix    where builds live: all that the runtime imports from this package
source    which source a build comes from, and its identity (pypi:, git:, sha256:)
fetch     the PyPI sdist, and a private copy of a source to patch
backends  the tree's xmake option for a backend; --xmake-option checks
vendor    NCCL and cuDNN from pip packages or $<LIB>_ROOT, and the RUNPATH
ops       which op folders are built (--ops)
patches   literal source fixes, the CUDA arch, the offline stand-ins
recipe    the plan for the tree in hand, and the digest that keys a build
request   a request checked where it enters
xmake     finding xmake and the compilers, running one step
install   build, stamp, install atomically; is_up_to_date
config    --print-config
cli       the command line

The recipe adapts to the tree in hand, and every adaptation is printed and recorded in
the stamp: xmake resolves `add_requires(...)` from a small local repository
(``xmake_repo/``, set ``--network=private``), a private ``XMAKE_GLOBALDIR`` per build
keeps runs apart, literal fixes (CUDA 13's CUB) apply where their text is, the CUDA arch
is set the way the tree expects, cuDNN comes from its pip package when an op uses it,
and ``--ops`` builds a subset (ops left out are absent, so the suite records them
`unsupported`). The build is idempotent (a stamp records what was built) and atomic.
"""

from importlib import import_module

# Resolved on first use: the runtime imports `infinilm_models.build.prefix`, which must
# not pull in the rest of the build tool.
_EXPORTS = {
    "BuildError": ".errors", "Source": ".source", "is_tarball": ".source",
    "build": ".install", "is_up_to_date": ".install", "main": ".cli",
    "cache_home": ".prefix", "default_prefix": ".prefix", "read_stamp": ".prefix",
    "sha256_file": ".prefix", "find_cudnn": ".vendor", "find_nccl": ".vendor",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
