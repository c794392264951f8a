"""Which xmake option builds a backend, read from the tree in hand, and the checks on
`--xmake-option KEY=VALUE`.

A tree's backends are its `infiniDevice_t` names (include/infinicore.h:
INFINI_DEVICE_<NAME>). The option that builds one is the top-level block of its xmake.lua
`if has_config("<option>") then ... add_defines("ENABLE_<NAME>..._API")`: 0.1.0 builds
Sugon (our hygon) with `sugon-dcu` (ENABLE_SUGON_CUDA_API), upstream with `hygon-dcu`
(ENABLE_HYGON_API). An option that another device option's blocks pull in with
`add_deps` is turned on too (0.1.0's Sugon links the NVIDIA target: `nv-gpu`), and the
environment variables the backend's own xmake file reads are named: that is where it
looks for the vendor's SDK. Where the xmake.lua names no device at all, or declares the
option elsewhere, the built-in table below (upstream's option names) answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import BuildError
from .prefix import BACKENDS, canonical_backend

BUILTIN_OPTIONS = {"cpu": "cpu", "nvidia": "nv-gpu", "cambricon": "cambricon-mlu",
                   "ascend": "ascend-npu", "metax": "metax-gpu", "moore": "moore-gpu",
                   "iluvatar": "iluvatar-gpu", "kunlun": "kunlun-xpu", "hygon": "hygon-dcu",
                   "qy": "qy-gpu", "ali": "ali-ppu"}
# The CPU backend and OpenMP are built with every device (the trees' own defaults).
BASE_FLAGS = ("--cpu=y", "--omp=y")
# Options the recipe sets itself, and what to use instead.
RECIPE_OWNED = {"ccl": "use --ccl", "cuda_arch": "use --cuda-arch",
                "cudnn": "it is on when cuDNN is found (nvidia-cudnn-cu13 or CUDNN_ROOT)",
                "shflags": "it carries the libraries' RUNPATH", "mode": "the recipe builds release"}
# xmake's own `xmake f` options (xmake 3.0.0 `xmake f --help`) a build may need: toolchains
# and SDK paths. Anything else must be an option the tree declares.
XMAKE_CONFIG_OPTIONS = frozenset((
    "plat arch kind toolchain toolchain_host runtimes cu cu-ccbin culd cuflags culdflags "
    "links syslinks linkdirs includedirs cc cxx cpp ld ar sh ranlib cflags cxflags cxxflags "
    "ldflags arflags as asflags cross target_os bin sdk cuda mingw ccache builddir policies"
).split())
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_TOP_BLOCK = re.compile(r'^if has_config\("([\w.-]+)"\) then\n(.*?)^end\b', re.M | re.S)
_ANY_BLOCK = re.compile(r'^([ \t]*)if has_config\("([\w.-]+)"\) then\n(.*?)^\1end\b',
                        re.M | re.S)


@dataclass(frozen=True)
class BackendOption:
    """How the tree in hand builds one backend."""

    backend: str
    option: str  # the xmake option, e.g. metax-gpu
    define: str | None  # the ENABLE_*_API it sets; None when from the built-in table
    companions: tuple[str, ...] = ()  # other device options it needs on
    environment: tuple[str, ...] = ()  # variables the backend's xmake file reads
    origin: str = "xmake.lua"  # or "the built-in table"

    def flags(self) -> list[str]:
        extra = [] if self.option == "cpu" else [self.option, *self.companions]
        return [*BASE_FLAGS, *(f"--{o}=y" for o in extra)]

    def note(self) -> str:
        """The recipe's line about it, where it is not simply upstream's option found in
        xmake.lua ("" then)."""
        if self.origin == "xmake.lua" and not self.companions and \
                self.option == BUILTIN_OPTIONS[self.backend]:
            return ""
        line = f"--backend {self.backend}: xmake option --{self.option} (from {self.origin}"
        line += f", {self.define})" if self.define else ")"
        if self.companions:
            line += (f", with {', '.join('--' + c for c in self.companions)} (its blocks "
                     "add_deps them)")
        return line

    def describe(self) -> dict:
        return {"option": self.option, "define": self.define, "origin": self.origin,
                "companions": list(self.companions), "environment": list(self.environment)}


def request_flags(backend: str) -> list[str]:
    """The configure flags a request names before any tree is read (the build digest)."""
    return BackendOption(backend, BUILTIN_OPTIONS[backend], None).flags()


def tree_devices(src: Path) -> list[str]:
    """INFINI_DEVICE_<NAME> of the tree's include/infinicore.h, upper case, in order."""
    header = src / "include" / "infinicore.h"
    text = header.read_text(errors="replace") if header.is_file() else ""
    names = re.findall(r"\bINFINI_DEVICE_(\w+)\s*=\s*\d+", text)
    return names or [b.upper() for b in BACKENDS]


def device_options(src: Path) -> dict[str, BackendOption]:
    """backend -> how the tree's xmake.lua builds it (the first top-level block that
    defines a device's ENABLE_*_API)."""
    text = (src / "xmake.lua").read_text(errors="replace")
    devices = tree_devices(src)
    found: dict[str, tuple[str, str, str]] = {}
    for option, body in _TOP_BLOCK.findall(text):
        m = re.search(r'add_defines\("ENABLE_(\w+?)_API"\)', body)
        if m is None:
            continue
        device = next((d for d in devices
                       if m.group(1) == d or m.group(1).startswith(d + "_")), None)
        if device is not None:
            backend = canonical_backend(device.lower())
            found.setdefault(backend, (option, f"ENABLE_{m.group(1)}_API", body))
    options = {option for option, _, _ in found.values()}
    out = {}
    for backend, (option, define, body) in found.items():
        deps = {d for _, opt, block in _ANY_BLOCK.findall(text) if opt == option
                for d in re.findall(r'add_deps\("([\w.-]+)"', block)}
        out[backend] = BackendOption(backend, option, define,
                                     tuple(sorted(deps & (options - {option}))),
                                     _environment(src, body))
    return out


def _environment(src: Path, body: str) -> tuple[str, ...]:
    names: set[str] = set()
    for rel in re.findall(r'includes\("([\w./-]+\.lua)"\)', body):
        f = src / rel
        if f.is_file():
            names |= set(re.findall(r'os\.getenv\("(\w+)"\)', f.read_text(errors="replace")))
    return tuple(sorted(names - {"HOME", "INFINI_ROOT"}))  # ours: the install prefix


def declared_options(src: Path) -> set[str]:
    """Every option("...") of xmake.lua and xmake/*.lua."""
    files = [src / "xmake.lua", *sorted((src / "xmake").glob("*.lua"))]
    return {name for f in files if f.is_file()
            for name in re.findall(r'^\s*option\("([\w.-]+)"', f.read_text(errors="replace"),
                                   re.M)}


def backend_option(src: Path, backend: str, label: str) -> BackendOption:
    """How `src` builds `backend`; a BuildError naming what it builds when it cannot."""
    found = device_options(src)
    if backend in found:
        return found[backend]
    # The table answers where the tree cannot be read (no device blocks found) or declares
    # the table's option in a way not read above; a tree that lists its devices and not
    # this one has none.
    if not found or BUILTIN_OPTIONS[backend] in declared_options(src):
        return BackendOption(backend, BUILTIN_OPTIONS[backend], None, origin="the built-in table")
    has = ", ".join(f"{b} (--{o.option})" for b, o in found.items())
    raise BuildError(f"--backend {backend}: {label} has no {backend} backend (its xmake.lua "
                     f"builds {has}); pass --source with an InfiniCore tree that has one")


def parse_xmake_option(text: str) -> tuple[str, str]:
    """KEY=VALUE (a leading -- allowed) of `--xmake-option`, checked before any tree is
    read: the syntax, and keys the recipe or `--backend` own."""
    key, eq, value = text.partition("=")
    key = key.removeprefix("--")
    if not eq or not _KEY.fullmatch(key) or not value or re.search(r"[\0\n\r]", value):
        raise BuildError(f"--xmake-option {text!r}: expected KEY=VALUE, e.g. use-mc=y or "
                         "hygon-arch=gfx936")
    if key in RECIPE_OWNED:
        raise BuildError(f"--xmake-option {text!r}: the recipe sets --{key} itself; "
                         f"{RECIPE_OWNED[key]}")
    if key in BUILTIN_OPTIONS.values():
        raise BuildError(f"--xmake-option {text!r}: a device backend's option; use --backend "
                         "(one backend per build)")
    return key, value


def check_xmake_options(src: Path, options: tuple[tuple[str, str], ...], label: str) -> None:
    """Each key is an option of this tree (not a device's: --backend picks that) or one
    of xmake's own configure options."""
    devices = {o.option for o in device_options(src).values()}
    declared = declared_options(src)
    for key, value in options:
        if key in devices:
            raise BuildError(f"--xmake-option {key}={value}: a device backend's option in "
                             f"{label}; use --backend (one backend per build)")
        if key not in declared and key not in XMAKE_CONFIG_OPTIONS:
            raise BuildError(f"--xmake-option {key}={value}: {label} declares no option "
                             f"{key!r} and xmake f has none (the tree's: "
                             f"{', '.join(sorted(declared - devices))})")
