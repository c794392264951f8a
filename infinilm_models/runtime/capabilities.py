"""What an InfiniCore build is and what it can do, learned once per prefix: the one place
that says which ops, optional APIs and device types a build has.

    build = current_build()            # the build library discovery finds (not loaded)
    build.identity.key                 # "pypi:0.1.0", "git:2cec6ce6...", "sha256:..."
    build.has_op("AddRMSNorm")         # every C function of its ops/specs.py row exported
    build.ccl_init_rank, build.graph_api, build.graph_runtime
    build.devices                      # infiniDevice_t of its installed infinicore.h

Everything here reads files: the prefix's stamp (written by `build.py`), its installed
`include/infinicore.h`, and the exported function and needed library names of its shared
libraries, taken from their ELF dynamic sections, so the suite's controller can plan
checks without loading InfiniCore (a crash in a kernel must never take the controller
down). The loaded library (library.py) is made from this record and declares exactly what
it lists; the model's fusion plan, the communicator, the graph API, `results.environment()`,
known-defect matching and the suite's collection (an op the build lacks is `unsupported`
there) all read it. Only where the ELF tables cannot be read (`exports_known` False) does
library.py complete it by looking the names up in the loaded libraries.

The C names of the optional APIs live here (`GRAPH`, `CCL_INIT_RANK`), with their ctypes
signatures, so that what is probed and what is declared cannot drift apart.
"""

from __future__ import annotations

import ctypes
import hashlib
import re
import struct
from collections.abc import Mapping
from ctypes import POINTER, c_int, c_size_t, c_void_p
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from ..build.prefix import read_stamp, sha256_file

LIBRARIES = ("libinfinirt.so", "libinfiniop.so", "libinfiniccl.so")
_CREATE = re.compile(r"infiniopCreate(\w+)Descriptor")


class InfinicclUniqueId(ctypes.Structure):
    """infinicclUniqueId_t of newer InfiniCore (not 0.1.0): 128 opaque bytes, the same
    size as ncclUniqueId, passed by value to infinicclCommInitRank."""

    _fields_ = [("internal", ctypes.c_char * 128)]


@dataclass(frozen=True)
class Api:
    """A group of C functions a build has or lacks as a whole (declared only where all
    are exported): name -> ctypes argtypes (every one returns infiniStatus_t)."""

    name: str
    library: str
    functions: dict
    since: str

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self.functions)


# infinirt's vendor-neutral capture API (after 0.1.0; "Luanch" is upstream's spelling).
GRAPH = Api("graph", "libinfinirt.so", {
    "infinirtStreamBeginCapture": (c_void_p, c_int),
    "infinirtStreamEndCapture": (c_void_p, POINTER(c_void_p)),
    "infinirtGraphInstantiate": (POINTER(c_void_p), c_void_p, POINTER(c_void_p), c_void_p,
                                 c_size_t),
    "infinirtGraphLuanch": (c_void_p, c_void_p),
    "infinirtGraphExecDestroy": (c_void_p,),
    "infinirtGraphDestroy": (c_void_p,),
}, "after 0.1.0")
# One process per rank: exported by InfiniCore after 0.1.0 (commit 1ba15fe0), not by 0.1.0.
CCL_INIT_RANK = Api("ccl_init_rank", "libinfiniccl.so", {
    "infinicclGetUniqueId": (POINTER(InfinicclUniqueId),),
    # comm out, nranks, unique id BY VALUE, rank
    "infinicclCommInitRank": (POINTER(c_void_p), c_int, InfinicclUniqueId, c_int),
}, "after 0.1.0 (1ba15fe0)")
APIS = (GRAPH, CCL_INIT_RANK)
GRAPH_SYMBOLS = GRAPH.symbols
CCL_INIT_RANK_SYMBOLS = CCL_INIT_RANK.symbols
# A CUDA runtime a build links against (DT_NEEDED): where infinirt has no capture API of
# its own (InfiniCore 0.1.0), the CUDA runtime's stream capture works on its streams.
_CUDA_RUNTIME = re.compile(r"libcudart\.so(\.\d+)*")

# infiniDevice_t of the installed header; each release's own table where a prefix has no
# headers (a vendor's INFINI_ROOT with lib/ only). Names are the enum's, lower-cased.
_DEVICE_ENUM = re.compile(r"typedef\s+enum\s*\{([^}]*)\}\s*infiniDevice_t\s*;")
_DEVICE_ENTRY = re.compile(r"\bINFINI_DEVICE_(\w+)\s*(?:=\s*(\d+))?")
_BASE_DEVICES = ("cpu", "nvidia", "cambricon", "ascend", "metax", "moore", "iluvatar",
                 "kunlun")
DEVICE_TABLES: dict[str, tuple[str, ...]] = {
    "pypi:0.1.0": _BASE_DEVICES + ("sugon",),
    "git:2cec6ce6": _BASE_DEVICES + ("hygon", "qy", "ali"),
}
NEWEST_DEVICE_TABLE = "git:2cec6ce6"


class ExportsUnknown(Exception):
    """The file is not an ELF shared object this reader understands."""


def elf_exports(path: Path) -> frozenset[str]:
    """Names of the functions `path` (an ELF shared object) defines and exports: global or
    weak FUNC symbols of .dynsym with a section (not undefined) and default or protected
    visibility. Raises ExportsUnknown for anything else (then callers probe by name)."""
    return elf_dynamic(path)[0]


def elf_dynamic(path: Path) -> tuple[frozenset[str], tuple[str, ...]]:
    """(exported function names as `elf_exports` reads them, DT_NEEDED library names in
    their order) of the ELF shared object `path`; ExportsUnknown if it is not one."""
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
            dyn, dynsize = end + "qQ", 16
        else:
            shoff, = struct.unpack_from(end + "I", data, 0x20)
            shentsize, shnum = struct.unpack_from(end + "HH", data, 0x2E)
            sec = end + "IIIIIIIIII"
            sym, symsize = end + "IIIBBH", 16
            dyn, dynsize = end + "iI", 8

        def string(table: int, at: int) -> str:
            stop = data.index(b"\0", table + at)
            return data[table + at:stop].decode("ascii", "replace")

        sections = [struct.unpack_from(sec, data, shoff + i * shentsize) for i in range(shnum)]
        names: set[str] = set()
        needed: list[str] = []
        for s in sections:
            offset, size, link = s[4], s[5], s[6]
            if s[1] == 6:  # SHT_DYNAMIC: DT_NEEDED (tag 1) entries name libraries
                strtab = sections[link][4]
                for i in range(size // dynsize):
                    tag, value = struct.unpack_from(dyn, data, offset + i * dynsize)
                    if tag == 0:  # DT_NULL ends the table
                        break
                    if tag == 1:
                        needed.append(string(strtab, value))
            if s[1] != 11:  # SHT_DYNSYM
                continue
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
                names.add(string(strtab, st_name))
        return frozenset(names), tuple(needed)
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
class DeviceTable:
    """infiniDevice_t of a build: lower-cased enum names -> codes, and where they came
    from (its header, or the table of its release when the prefix has no headers)."""

    codes: dict
    source: str

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self.codes, key=self.codes.__getitem__))


def parse_device_enum(text: str) -> dict[str, int]:
    """The infiniDevice_t enum of an infinicore.h: {"cpu": 0, ..., "hygon": 8, ...}
    (implicit values count on from the previous one, as in C; TYPE_COUNT is no device)."""
    found = _DEVICE_ENUM.search(re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S))
    if found is None:
        return {}
    codes: dict[str, int] = {}
    value = -1
    for m in _DEVICE_ENTRY.finditer(found.group(1)):
        value = int(m.group(2)) if m.group(2) is not None else value + 1
        if m.group(1) != "TYPE_COUNT":
            codes[m.group(1).lower()] = value
    return codes


_device_tables: dict[Path, DeviceTable] = {}


def device_table(root: Path) -> DeviceTable:
    """The device types the build at `root` knows, read once per prefix without loading
    it: its installed include/infinicore.h, else its release's table (by its stamp; a
    build without either gets the newest release's)."""
    found = _device_tables.get(root)
    if found is not None:
        return found
    header = root / "include" / "infinicore.h"
    codes: dict[str, int] = {}
    try:
        codes = parse_device_enum(header.read_text(errors="replace"))
    except OSError:
        pass
    if codes:
        table = DeviceTable(codes, str(header))
    else:
        key = _identity(read_stamp(root), "", root).key
        probe = BuildIdentity(key=key, label="")
        release = next((k for k in DEVICE_TABLES if probe.matches(k)), None)
        why = (f"the table of {release} ({header} absent or without infiniDevice_t)"
               if release else f"the table of {NEWEST_DEVICE_TABLE}, the newest known "
               f"({header} absent or without infiniDevice_t; build {key})")
        names = DEVICE_TABLES[release or NEWEST_DEVICE_TABLE]
        table = DeviceTable({n: i for i, n in enumerate(names)}, why)
    _device_tables[root] = table
    return table


@dataclass(frozen=True)
class Build:
    root: Path
    identity: BuildIdentity
    exports: frozenset[str]
    exports_known: bool  # read from the ELF tables (False: unreadable, probe by name)
    library_sha256: dict = field(default_factory=dict)
    stamp: dict | None = None
    needed: tuple[str, ...] = ()  # DT_NEEDED names of its libraries, in LIBRARIES order

    @property
    def exports_digest(self) -> str:
        """sha256 of the sorted exported function names, one per line: two builds with the
        same digest offer the same C API."""
        return hashlib.sha256("".join(n + "\n" for n in sorted(self.exports)).encode()
                              ).hexdigest()

    @cached_property
    def ops(self) -> frozenset[str]:
        """Every C op it exports (create + compute), with or without a spec of ours."""
        return ops_of(self.exports)

    @cached_property
    def bound_ops(self) -> frozenset[str]:
        """The ops of ops/specs.py it exports every function of: what library.py
        declares and `CachedOp` can call."""
        from .ops.specs import SPECS

        return frozenset(s.name for s in SPECS if all(f in self.exports for f in s.functions))

    def has(self, symbol: str) -> bool:
        return symbol in self.exports

    def has_op(self, name: str) -> bool:
        """The op can be called: every C function of its spec row is exported (an op
        without a row: its create and compute functions)."""
        from .ops.specs import BY_NAME

        s = BY_NAME.get(name)
        if s is None:
            return name in self.ops
        return all(f in self.exports for f in s.functions)

    def has_api(self, api: Api) -> bool:
        return all(self.has(s) for s in api.symbols)

    @property
    def ccl_init_rank(self) -> bool:
        return self.has_api(CCL_INIT_RANK)

    @property
    def graph_api(self) -> bool:
        return self.has_api(GRAPH)

    @property
    def cuda_runtime(self) -> str | None:
        """The CUDA runtime (its soname) one of its libraries links against, if any."""
        return next((n for n in self.needed if _CUDA_RUNTIME.fullmatch(n)), None)

    @property
    def graph_runtime(self) -> str | None:
        """Whose stream capture runs captured steps: "infinirt" where the build exports
        infinirt's graph API, else the CUDA runtime it links against (its soname), else
        None (no graph API: steps run eagerly). Whether a given device's streams take
        it is the device's answer (graph.py asks it once)."""
        if self.graph_api:
            return "infinirt"
        return self.cuda_runtime

    @property
    def devices(self) -> DeviceTable:
        return device_table(self.root)

    def probed(self, exported) -> Build:
        """This build completed by a by-name lookup (`exported(symbol) -> bool` on the
        loaded libraries) of every symbol a capability needs: only for a build whose ELF
        tables could not be read (`exports_known` False); a readable one is returned as
        it is."""
        if self.exports_known:
            return self
        from .ops.specs import SPECS

        wanted = {f for s in SPECS for f in s.functions} | {n for a in APIS for n in a.symbols}
        return replace(self, exports=self.exports | {n for n in wanted if exported(n)})

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
            "graph_runtime": self.graph_runtime,
            "device_types": dict(self.devices.codes), "device_types_from": self.devices.source,
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
    libdir = root / "lib"
    exports: set[str] = set()
    needed: list[str] = []
    known = True
    hashes = {}
    for lib in LIBRARIES:
        p = libdir / lib
        if not p.is_file():
            continue
        hashes[lib] = sha256_file(p)
        try:
            names, libs = elf_dynamic(p)
        except (ExportsUnknown, OSError):
            known = False
            continue
        exports |= names
        needed += [n for n in libs if n not in needed]
    digest = hashlib.sha256("".join(n + "\n" for n in sorted(exports)).encode()).hexdigest()
    stamp = read_stamp(root)
    identity = replace(_identity(stamp, digest, root), also=(
        f"exports:{digest}", f"libs:{libraries_digest(hashes)}"))
    return Build(root=root, identity=identity,
                 exports=frozenset(exports), exports_known=known, library_sha256=hashes,
                 stamp=stamp, needed=tuple(needed))


_cache: dict[Path, Build] = {}


def build_at(root: Path) -> Build:
    """The build at `root`, read once per prefix (library.py replaces the entry with the
    by-name completed one when it loads a build whose exports are unknown)."""
    root = root.resolve()
    found = _cache.get(root)
    if found is None:
        found = _cache[root] = read_build(root)
    return found


def remember(build: Build) -> None:
    """Make `build` the record of its prefix (the loaded library's, completed by name)."""
    _cache[build.root.resolve()] = build


def current_build() -> Build:
    """The build library discovery finds now (INFINI_ROOT, ...), read once per prefix."""
    from .discovery import find_root

    return build_at(find_root())


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
