"""Device names come from the build in hand: its installed include/infinicore.h (read
without loading InfiniCore), else its release's table. Upstream's header (8 = hygon,
9 = qy, 10 = ali) and 0.1.0's (8 = sugon) both hold, with InfiniCore's and InfiniLM's
other names for each kind; a name the build does not know is one line naming those it
does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from conformance.ci import NOT_CONFIGURED, upstream_source
from infinilm_models.runtime import Device, discovery, library
from infinilm_models.runtime.capabilities import (
    DEVICE_TABLES,
    current_build,
    device_table,
    parse_device_enum,
)
from infinilm_models.runtime.device import KINDS, backend_of, kind_of, resolve_type

ROOT = Path(__file__).resolve().parents[1]
# What the headers say (the reading of include/infinicore.h of each release).
UPSTREAM = {"cpu": 0, "nvidia": 1, "cambricon": 2, "ascend": 3, "metax": 4, "moore": 5,
            "iluvatar": 6, "kunlun": 7, "hygon": 8, "qy": 9, "ali": 10}
RELEASE_010 = {**{k: v for k, v in UPSTREAM.items() if v < 8}, "sugon": 8}


@pytest.fixture(scope="module")
def upstream_prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prefix holding upstream's installed header: the build in hand when it is an
    upstream one, else a cached upstream build, else a prefix made of the header of the
    upstream source (conformance.ci.upstream_source: $INFINILM_UPSTREAM_SOURCE, else
    ../shared/infinicore; the file its build installs). None of these: not configured,
    recorded unsupported with the reason, as the upstream run leaves itself out."""
    build = current_build()
    if "hygon" in device_table(build.root).codes:
        return build.root
    cache = library.candidate_roots()[-1][1].parent  # where builds are cached
    for prefix in sorted(cache.glob("infinicore-git-*")):
        if (prefix / "include" / "infinicore.h").is_file() and \
                "hygon" in device_table(prefix).codes:
            return prefix
    src = upstream_source()
    if src is None:
        pytest.skip(NOT_CONFIGURED)
    for tar in sorted(src.glob("*.tar.gz")) if src.is_dir() else []:
        with tarfile.open(tar) as t:
            member = next((m for m in t if m.name.endswith("/include/infinicore.h")), None)
            if member is None:
                continue
            prefix = tmp_path_factory.mktemp("upstream")
            (prefix / "include").mkdir()
            (prefix / "include" / "infinicore.h").write_bytes(t.extractfile(member).read())
            return prefix
    if (src / "include" / "infinicore.h").is_file():
        return src
    pytest.fail(f"no upstream InfiniCore header in {src} (INFINILM_UPSTREAM_SOURCE or "
                "../shared/infinicore: an upstream source tree or tarball)")


@pytest.fixture(scope="module")
def release_010_prefix() -> Path:
    """The 0.1.0 build: the one in hand, else its default prefix."""
    build = current_build()
    if build.identity.key == "pypi:0.1.0":
        return build.root
    return library.candidate_roots()[-1][1]


def test_upstream_header_every_name_and_alias(upstream_prefix: Path) -> None:
    table = device_table(upstream_prefix)
    assert table.codes == UPSTREAM and table.source.endswith("include/infinicore.h")
    for kind in KINDS:
        for name in kind:  # every name of every kind: the header's own and the aliases
            assert table.codes[resolve_type(name, table)] == UPSTREAM[kind[0]], name
            assert table.codes[resolve_type(name.upper(), table)] == UPSTREAM[kind[0]]
    assert resolve_type("sugon", table) == resolve_type("dcu", table) == "hygon"
    assert resolve_type("ppu", table) == "ali" and resolve_type("qy", table) == "qy"
    assert (resolve_type("cuda", table), resolve_type("npu", table), resolve_type("mlu", table),
            resolve_type("musa", table), resolve_type("xpu", table)) == \
        ("nvidia", "ascend", "cambricon", "moore", "kunlun")


def test_release_010_header_names(release_010_prefix: Path) -> None:
    table = device_table(release_010_prefix)
    assert table.codes == RELEASE_010
    for name in ("hygon", "sugon", "dcu"):
        assert resolve_type(name, table) == "sugon"
    for kind in KINDS:
        if kind[0] not in ("qy", "ali"):  # not in 0.1.0
            want = UPSTREAM[kind[0]]  # the codes 0-8 did not move
            for name in kind:
                assert table.codes[resolve_type(name, table)] == want, name


@pytest.mark.parametrize("name", ["qy", "ali", "ppu", "tpu"])
def test_a_name_the_build_does_not_know_is_one_line(release_010_prefix: Path,
                                                    name: str) -> None:
    with pytest.raises(ValueError) as info:
        resolve_type(name, device_table(release_010_prefix))
    message = str(info.value)
    assert "\n" not in message and repr(name) in message
    assert "it knows: cpu, nvidia, cambricon, ascend, metax, moore, iluvatar, kunlun, sugon" \
        in message


def test_the_build_in_hand_names_devices() -> None:
    """Device.parse asks the build discovery finds (0.1.0 or upstream): the kind names
    agree, and hygon/sugon/dcu are one device with code 8 on either."""
    codes = device_table(current_build().root).codes
    dcu = Device.parse("dcu:1")
    assert dcu == Device.parse("hygon:1") == Device.parse("sugon:1") == Device("hygon", 1)
    assert dcu.type in ("hygon", "sugon") and dcu.code == 8 == codes[dcu.type]
    assert Device.parse("cuda") == Device("nvidia") and Device.parse("npu").code == 3
    assert kind_of(dcu.type) == "hygon" and kind_of("gpu") == "nvidia"
    with pytest.raises(ValueError, match="it knows: cpu, nvidia"):
        Device.parse("tpu:0")


def test_enum_parsing_follows_c() -> None:
    text = """
    typedef enum { INFINI_STATUS_SUCCESS = 0 } infiniStatus_t;
    typedef enum {
        INFINI_DEVICE_CPU = 0, // the host
        /* INFINI_DEVICE_OLD = 3, */
        INFINI_DEVICE_NVIDIA,
        INFINI_DEVICE_NEWCHIP = 7,
        INFINI_DEVICE_NEXT,
        INFINI_DEVICE_TYPE_COUNT
    } infiniDevice_t;
    """
    assert parse_device_enum(text) == {"cpu": 0, "nvidia": 1, "newchip": 7, "next": 8}
    assert parse_device_enum("typedef enum { A = 1 } other_t;") == {}


def test_a_prefix_without_headers_gets_its_release_table(tmp_path: Path) -> None:
    stamped = tmp_path / "stamped"
    (stamped / "lib").mkdir(parents=True)
    (stamped / ".infinilm-build.json").write_text(json.dumps(
        {"source": {"key": "pypi:0.1.0", "label": "InfiniCore 0.1.0"}}))
    table = device_table(stamped)
    assert table.codes == RELEASE_010 and "pypi:0.1.0" in table.source
    bare = tmp_path / "vendor"
    (bare / "lib").mkdir(parents=True)
    table = device_table(bare)
    assert table.codes == dict(zip(DEVICE_TABLES["git:2cec6ce6"], range(11))) == UPSTREAM
    assert "newest known" in table.source


def test_parsing_does_not_load_infinicore() -> None:
    """The pytest controller parses --infini-device without loading InfiniCore."""
    code = ("import sys; from infinilm_models.runtime import Device, library\n"
            "d = Device.parse('dcu:0'); print(d.type, d.code)\n"
            "assert library._lib is None\n"
            "maps = open('/proc/self/maps').read()\n"
            "assert 'libinfiniop' not in maps and 'libinfinirt' not in maps, 'loaded'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[1] == "8"


def test_the_suite_refuses_a_name_the_build_does_not_know(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """--infini-device with a name the build in hand (INFINI_ROOT) does not know: a
    one-line usage error at configure (0.1.0 has no qy; upstream has no tpu); the backend
    is picked by the kind's name first, whatever build the default prefix holds."""
    from conformance.plugin import _select_backend

    root = current_build().root
    monkeypatch.setenv("INFINI_ROOT", str(root))
    monkeypatch.setattr(discovery, "_default_backend", discovery._default_backend)
    name = "tpu" if "qy" in device_table(root).codes else "qy"
    config = SimpleNamespace(getoption=lambda opt: f"{name}:0")
    with pytest.raises(pytest.UsageError) as info:
        _select_backend(config)
    line = str(info.value)
    assert "\n" not in line and line.startswith("--infini-device: unknown device type")
    assert f"{name!r}" in line and "it knows: cpu, nvidia" in line
    config = SimpleNamespace(getoption=lambda opt: "dcu:0")  # a name it does know: fine
    _select_backend(config)
    assert library.default_backend() == "hygon"
    assert backend_of("sugon:1") == "hygon" and backend_of("nv idia") is None
