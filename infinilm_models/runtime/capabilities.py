"""What an InfiniCore build is and what it can do, learned once per prefix.

    build = current_build()            # the build library discovery finds (not loaded)
    build.identity.key                 # "pypi:0.1.0", "git:2cec6ce6...", "sha256:..."
    build.has_op("AddRMSNorm")         # infiniopCreate/Get...WorkspaceSize/compute/Destroy
    build.ccl_init_rank, build.graph_api

Everything here reads files: the prefix's stamp (written by `build.py`) and the exported
function names of its shared libraries, taken from their ELF dynamic symbol tables, so
the suite's controller can plan checks without loading InfiniCore (a crash in a kernel
must never take the controller down). The readers are the op declarations (library.py),
the communicator, the graph API, the model's fused-op choice, `results.environment()`,
known-defect matching and the suite's coverage list.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from .source import sha256_file

LIBRARIES = ("libinfinirt.so", "libinfiniop.so", "libinfiniccl.so")
# One process per rank: exported by InfiniCore after 0.1.0 (commit 1ba15fe0), not by 0.1.0.
CCL_INIT_RANK_SYMBOLS = ("infinicclGetUniqueId", "infinicclCommInitRank")
# infinirt's vendor-neutral capture API (after 0.1.0; "Luanch" is upstream's spelling).
GRAPH_SYMBOLS = ("infinirtStreamBeginCapture", "infinirtStreamEndCapture",
                 "infinirtGraphInstantiate", "infinirtGraphLuanch",
                 "infinirtGraphExecDestroy", "infinirtGraphDestroy")
_CREATE = re.compile(r"infiniopCreate(\w+)Descriptor")


class ExportsUnknown(Exception):
    """The file is not an ELF shared object this reader understands."""


def elf_exports(path: Path) -> frozenset[str]:
    """Names of the functions `path` (an ELF shared object) defines and exports: global or
    weak FUNC symbols of .dynsym with a section (not undefined) and default or protected
    visibility. Raises ExportsUnknown for anything else (then callers probe by name)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF":
        raise ExportsUnknown(f"{path}: not an ELF file")
    is64, little = data[4] == 2, data[5] == 1
    end = "<" if little else ">"
    try:
        if is64:
            shoff, = struct.unpack_from(end + "Q", data, 0x28)
            shentsize, shnum = struct.unpack_from(end + "HH", data, 0x3A)
            sec = end + "IIQQQQIIQQ"
            sym, symsize = end + "IBBHQQ", 24
        else:
            shoff, = struct.unpack_from(end + "I", data, 0x20)
            shentsize, shnum = struct.unpack_from(end + "HH", data, 0x2E)
            sec = end + "IIIIIIIIII"
            sym, symsize = end + "IIIBBH", 16
        sections = [struct.unpack_from(sec, data, shoff + i * shentsize) for i in range(shnum)]
        names: set[str] = set()
        for s in sections:
            if s[1] != 11:  # SHT_DYNSYM
                continue
            offset, size, link = s[4], s[5], s[6]
            strtab = sections[link][4]
            for i in range(size // symsize):
                fields = struct.unpack_from(sym, data, offset + i * symsize)
                if is64:
                    st_name, st_info, st_other, st_shndx = fields[0], fields[1], fields[2], \
                        fields[3]
                else:
                    st_name, st_info, st_other, st_shndx = fields[0], fields[3], fields[4], \
                        fields[5]
                if st_shndx == 0 or (st_info & 0xF) != 2 or (st_info >> 4) not in (1, 2) \
                        or (st_other & 0x3) not in (0, 3):
                    continue
                stop = data.index(b"\0", strtab + st_name)
                names.add(data[strtab + st_name:stop].decode("ascii", "replace"))
        return frozenset(names)
    except (struct.error, IndexError, ValueError) as e:
        raise ExportsUnknown(f"{path}: unreadable ELF ({e})") from None


def ops_of(exports: frozenset[str]) -> frozenset[str]:
    """C op names whose descriptor can be created and computed: "Gemm" for
    infiniopCreateGemmDescriptor + infiniopGemm, "RandomSampleBatch" for
    infiniopCreateRandomSampleBatchDescriptor + infiniopRandomSampleBatch."""
    return frozenset(m.group(1) for name in exports if (m := _CREATE.fullmatch(name))
                     and f"infiniop{m.group(1)}" in exports)


@dataclass(frozen=True)
class BuildIdentity:
    """Which InfiniCore this is: from the stamp our recipe writes, else (a vendor's own
    build) from its exported functions alone."""

    key: str  # pypi:<version> | git:<commit> | sha256:<digest> | exports:<digest>
    label: str
    source: dict = field(default_factory=dict)  # source.Source.describe(), when known
    backend: str | None = None
    options: tuple[str, ...] = ()  # xmake configure flags
    patches: tuple[str, ...] = ()  # every adaptation of the recipe to the tree
    ops_left_out: tuple[str, ...] = ()
    stamped: bool = False  # built by this project's recipe
    # Other keys naming this very build, whatever made it: exports:<digest> (its C API),
    # libs:<digest> (its libraries' bytes: same exports, other kernels differ here).
    also: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key, *self.also)

    def matches(self, pattern: str) -> bool:
        """`pattern` names this build by one of its keys: the same kind, its value a
        prefix of ours of at least 7 characters (a short commit, a digest), or equal (a
        version)."""
        kind, _, value = pattern.partition(":")
        for key in self.keys:
            mine_kind, _, mine = key.partition(":")
            if kind != mine_kind or not value:
                continue
            if value == mine if kind == "pypi" else (len(value) >= 7 and mine.startswith(value)):
                return True
        return False


def libraries_digest(library_sha256: Mapping[str, str]) -> str:
    """sha256 over each library's name and sha256, one per line, sorted: the `libs:` key."""
    return hashlib.sha256("".join(f"{name} {digest}\n" for name, digest in
                                  sorted(library_sha256.items())).encode()).hexdigest()


@dataclass(frozen=True)
class Build:
    root: Path
    identity: BuildIdentity
    exports: frozenset[str]
    exports_known: bool  # read from the ELF tables (False: unreadable, probe by name)
    library_sha256: dict = field(default_factory=dict)
    stamp: dict | None = None

    @property
    def exports_digest(self) -> str:
        """sha256 of the sorted exported function names, one per line: two builds with the
        same digest offer the same C API."""
        return hashlib.sha256("".join(n + "\n" for n in sorted(self.exports)).encode()
                              ).hexdigest()

    @property
    def ops(self) -> frozenset[str]:
        return ops_of(self.exports)

    def has(self, symbol: str) -> bool:
        return symbol in self.exports

    def has_op(self, name: str) -> bool:
        return name in self.ops

    @property
    def ccl_init_rank(self) -> bool:
        return all(self.has(s) for s in CCL_INIT_RANK_SYMBOLS)

    @property
    def graph_api(self) -> bool:
        return all(self.has(s) for s in GRAPH_SYMBOLS)

    def describe(self) -> dict:
        """The identity block of results.json's environment (`infinicore`)."""
        i = self.identity
        return {
            "key": i.key, "label": i.label, "root": str(self.root), "source": i.source,
            "backend": i.backend, "options": list(i.options), "patches": list(i.patches),
            "ops_left_out": list(i.ops_left_out), "stamped": i.stamped,
            "exports_digest": self.exports_digest, "exports_known": self.exports_known,
            "exported_functions": len(self.exports),
            "exported_ops": sorted(self.ops),
            "ccl_init_rank": self.ccl_init_rank, "graph_api": self.graph_api,
            "library_sha256": dict(self.library_sha256),
            "keys": list(dict.fromkeys([i.key, *(k[: k.index(":") + 17] for k in i.also)])),
        }


def _identity(stamp: dict | None, exports_digest: str, root: Path) -> BuildIdentity:
    if not stamp:
        return BuildIdentity(key=f"exports:{exports_digest[:16]}",
                             label=f"InfiniCore at {root} (not built by this recipe: no stamp; "
                                   f"exports {exports_digest[:12]})")
    source = stamp.get("source") or {}
    if not source:  # stamps of recipes before source identities: always the PyPI sdist
        version = stamp.get("infinicore_version") or "0.1.0"
        source = {"kind": "pypi", "key": f"pypi:{version}",
                  "label": f"InfiniCore {version} (PyPI sdist)", "version": version,
                  "sha256": stamp.get("sdist_sha256")}
    ops = stamp.get("ops") or {}
    return BuildIdentity(
        key=source.get("key") or f"exports:{exports_digest[:16]}",
        label=source.get("label") or str(root), source=source,
        backend=stamp.get("backend"), options=tuple(stamp.get("flags") or ()),
        patches=tuple(p if isinstance(p, str) else str(p) for p in stamp.get("patches") or ()),
        ops_left_out=tuple(sorted(ops.get("left_out") or ())), stamped=True)


def read_build(root: Path) -> Build:
    """The build installed at `root` (a prefix with lib/), without loading it."""
    from .build import read_stamp

    libdir = root / "lib"
    exports: set[str] = set()
    known = True
    hashes = {}
    for lib in LIBRARIES:
        p = libdir / lib
        if not p.is_file():
            continue
        hashes[lib] = sha256_file(p)
        try:
            exports |= elf_exports(p)
        except (ExportsUnknown, OSError):
            known = False
    digest = hashlib.sha256("".join(n + "\n" for n in sorted(exports)).encode()).hexdigest()
    stamp = read_stamp(root)
    identity = replace(_identity(stamp, digest, root), also=(
        f"exports:{digest}", f"libs:{libraries_digest(hashes)}"))
    return Build(root=root, identity=identity,
                 exports=frozenset(exports), exports_known=known, library_sha256=hashes,
                 stamp=stamp)


_cache: dict[Path, Build] = {}


def current_build() -> Build:
    """The build library discovery finds now (INFINI_ROOT, ...), read once per prefix."""
    from .library import find_root

    root = find_root().resolve()
    found = _cache.get(root)
    if found is None:
        found = _cache[root] = read_build(root)
    return found


# Ops that cannot be captured into a device graph, per build and device type, as the
# capturability check (conformance/ops/test_op_capture.py) found them on an H200: 0.1.0's
# elementwise ops copy their operand pointers from freed host memory at replay (known
# defect nvidia-elementwise-not-capturable, 2026-11-30); upstream 2cec6ce6 made add and
# swiglu capture-safe, not mul (nvidia-mul-not-capturable, 2026-12-02). The decode step
# runs these eagerly between captured segments. A build not listed gets the release's
# list: running an op eagerly is always right, replaying an unsafe one is not.
UNCAPTURABLE: dict[tuple[str, str], tuple[str, ...]] = {
    ("pypi:0.1.0", "nvidia"): ("SwiGLU", "Add", "Mul"),
    ("git:2cec6ce6", "nvidia"): ("Mul",),
}


def uncapturable_ops(build: Build, device_type: str) -> tuple[str, ...]:
    for (key, device), names in UNCAPTURABLE.items():
        if device == device_type and build.identity.matches(key):
            return names
    return UNCAPTURABLE.get(("pypi:0.1.0", device_type), ())
