"""`build --ccl`: NCCL found from its pip package (a fake one here), the scratch NCCL_ROOT
xmake reads, the RUNPATH, the stamp, and the refusal on the CPU. No real build runs."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from infinilm_models.build import cli, install, recipe, vendor, xmake
from infinilm_models.build.errors import BuildError
from infinilm_models.build.prefix import INFINICORE_VERSION, STAMP_NAME, read_stamp
from infinilm_models.build.vendor import find_nccl


def fake_nccl_package(site: Path, name: str = "nvidia-nccl-cu12", version: str = "2.21.5",
                      record: bool = True, files: bool = True) -> Path:
    """A wheel's installed layout: nvidia/nccl/{include/nccl.h, lib/libnccl.so.2} plus
    its dist-info (METADATA, and RECORD, the file list importlib.metadata reads)."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    paths = ["nvidia/nccl/include/nccl.h", "nvidia/nccl/lib/libnccl.so.2"]
    if record:
        (info / "RECORD").write_text("".join(f"{p},,\n" for p in paths)
                                     + f"{info.name}/METADATA,,\n")
    if files:
        for p in paths:
            (site / p).parent.mkdir(parents=True, exist_ok=True)
            (site / p).write_text(f"fake {p}\n")
    return site / "nvidia" / "nccl"


def test_finds_the_pip_package(tmp_path: Path) -> None:
    base = fake_nccl_package(tmp_path / "site")
    nccl = find_nccl([str(tmp_path / "site")], environ={})
    assert nccl.include == (base / "include").resolve()
    assert nccl.library == (base / "lib" / "libnccl.so.2").resolve()
    assert nccl.source == "nvidia-nccl-cu12 2.21.5"


def test_prefers_cu13(tmp_path: Path) -> None:
    site = tmp_path / "site"
    fake_nccl_package(site, "nvidia-nccl-cu12")
    other = tmp_path / "site13"
    fake_nccl_package(other, "nvidia-nccl-cu13", "2.28.3")
    assert find_nccl([str(site), str(other)], environ={}).source == "nvidia-nccl-cu13 2.28.3"


def test_without_record_uses_the_known_layout(tmp_path: Path) -> None:
    base = fake_nccl_package(tmp_path / "site", record=False)
    assert find_nccl([str(tmp_path / "site")], environ={}).include == (base / "include").resolve()


def test_package_without_its_files(tmp_path: Path) -> None:
    fake_nccl_package(tmp_path / "site", files=False)
    with pytest.raises(BuildError, match="nvidia-nccl-cu12 2.21.5 is installed but"):
        find_nccl([str(tmp_path / "site")], environ={})


def test_absent_package_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="pip install nvidia-nccl-cu13"):
        find_nccl([str(tmp_path)], environ={})


def test_nccl_root_from_the_environment(tmp_path: Path) -> None:
    root = tmp_path / "nccl"
    (root / "include").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "include" / "nccl.h").write_text("")
    (root / "lib" / "libnccl.so.2.21.5").write_text("")
    (root / "lib" / "libnccl.so").symlink_to("libnccl.so.2.21.5")
    nccl = find_nccl([str(tmp_path / "nowhere")], environ={"NCCL_ROOT": str(root)})
    assert nccl.library == (root / "lib" / "libnccl.so.2.21.5").resolve()
    assert nccl.source == f"NCCL_ROOT={root}"
    with pytest.raises(BuildError, match="lacks include/nccl.h"):
        find_nccl([], environ={"NCCL_ROOT": str(tmp_path / "empty")})


def test_scratch_nccl_root(tmp_path: Path) -> None:
    fake_nccl_package(tmp_path / "site")
    nccl = find_nccl([str(tmp_path / "site")], environ={})
    for _ in range(2):  # idempotent
        root = vendor.nccl_root(nccl, tmp_path / "root")
    assert (root / "include" / "nccl.h").read_text() == "fake nvidia/nccl/include/nccl.h\n"
    assert (root / "lib" / "libnccl.so").resolve() == nccl.library


def test_link_flags(tmp_path: Path) -> None:
    assert vendor.link_flags(None) == vendor.COMMON_FLAGS
    fake_nccl_package(tmp_path / "site")
    nccl = find_nccl([str(tmp_path / "site")], environ={})
    assert vendor.link_flags(nccl) == [
        f"--shflags=-Wl,-rpath,$ORIGIN:{nccl.library.parent}"]
    odd = vendor.Nccl(nccl.include, Path("/a:b/libnccl.so.2"), "x")
    with pytest.raises(BuildError, match="RUNPATH"):
        vendor.link_flags(odd)


def test_ccl_refused_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(BuildError, match="InfiniCCL has no cpu backend"):
        install.build("cpu", tmp_path / "prefix", ccl=True)
    assert cli.main(["--backend", "cpu", "--ccl", "--prefix", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err
    assert "InfiniCCL has no cpu backend" in err and "LoopbackCommunicator" in err
    assert not (tmp_path / "p").exists() and not (tmp_path / "prefix").exists()


def test_ccl_without_nccl_fails_before_building(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NCCL_ROOT", raising=False)
    monkeypatch.setattr(vendor, "NCCL_DISTRIBUTIONS", ("no-such-nccl-package",))
    monkeypatch.setattr(xmake, "check_tools", lambda b: pytest.fail("got as far as the tools"))
    with pytest.raises(BuildError, match="needs NCCL"):
        install.build("nvidia", tmp_path / "prefix", ccl=True)


def fake_sdist(tmp_path: Path) -> Path:
    """An sdist stand-in: PKG-INFO and an xmake.lua at its top directory, no sources."""
    sdist = tmp_path / f"infinicore-{INFINICORE_VERSION}.tar.gz"
    top = f"infinicore-{INFINICORE_VERSION}"
    files = {"PKG-INFO": f"Name: infinicore\nVersion: {INFINICORE_VERSION}\n",
             "xmake.lua": 'add_requires("pybind11")\n'}
    with tarfile.open(sdist, "w:gz") as tar:
        for name, text in files.items():
            (tmp_path / name).write_text(text)
            tar.add(tmp_path / name, f"{top}/{name}")
    return sdist


def fake_prefix(prefix: Path, backend: str, ccl: bool, nccl_lib: Path | None = None) -> None:
    (prefix / "lib").mkdir(parents=True)
    for lib in install.LIBRARIES:
        (prefix / "lib" / lib).write_bytes(b"")
    stamp = {"backend": backend, "recipe": recipe.recipe_digest(backend, "native", ccl),
             "ccl": ccl, "nccl": {"library": str(nccl_lib)} if ccl else None}
    (prefix / STAMP_NAME).write_text(json.dumps(stamp))


def test_stamp_and_up_to_date(tmp_path: Path) -> None:
    assert recipe.recipe_digest("nvidia") == recipe.recipe_digest("nvidia", "native", False)
    assert recipe.recipe_digest("nvidia") != recipe.recipe_digest("nvidia", "native", True)
    plain, with_ccl = tmp_path / "plain", tmp_path / "ccl"
    lib = tmp_path / "libnccl.so.2"
    lib.write_bytes(b"")
    fake_prefix(plain, "nvidia", False)
    fake_prefix(with_ccl, "nvidia", True, lib)
    assert install.is_up_to_date(plain, "nvidia")
    assert not install.is_up_to_date(plain, "nvidia", ccl=True)
    assert install.is_up_to_date(with_ccl, "nvidia", ccl=True)
    # a plain request (tox, CI) keeps a build with InfiniCCL rather than rebuild it away
    assert install.is_up_to_date(with_ccl, "nvidia")
    lib.unlink()  # the NCCL it was linked against is gone: its RUNPATH leads nowhere
    assert not install.is_up_to_date(with_ccl, "nvidia", ccl=True)
    assert not install.is_up_to_date(with_ccl, "nvidia")


def test_build_wiring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What build() hands xmake with --ccl, the xmake steps faked: --ccl=y, NCCL_ROOT
    with the links at configure time, the RUNPATH; and what the stamp records."""
    site = tmp_path / "site"
    fake_nccl_package(site, "nvidia-nccl-cu13", "2.28.3")
    real_find = vendor.find_nccl
    monkeypatch.setattr(vendor, "find_nccl", lambda: real_find([str(site)], environ={}))
    monkeypatch.setattr(xmake, "check_tools", lambda backend: "xmake")
    monkeypatch.setattr(recipe, "apply_patches", lambda src, backend, strict=True, write=True: [])
    sdist = fake_sdist(tmp_path)
    steps: list[tuple[str, list[str], dict]] = []

    def fake_run(cmd, cwd, env, step, log):
        steps.append((step, list(cmd), dict(env)))
        log.touch()
        if step == "xmake configure":
            root = Path(env["NCCL_ROOT"])
            assert (root / "include" / "nccl.h").is_file()
            assert (root / "lib" / "libnccl.so").resolve().name == "libnccl.so.2"
        if step.startswith("xmake install"):
            lib = Path(env["INFINI_ROOT"]) / "lib"
            lib.mkdir(parents=True, exist_ok=True)
            for name in install.LIBRARIES:
                (lib / name).write_bytes(b"")

    monkeypatch.setattr(xmake, "run_step", fake_run)
    prefix = install.build("nvidia", tmp_path / "prefix", sdist=sdist, ccl=True)
    configure, env = next((cmd, env) for step, cmd, env in steps if step == "xmake configure")
    libdir = (site / "nvidia" / "nccl" / "lib").resolve()
    assert "--ccl=y" in configure and "--nv-gpu=y" in configure
    assert f"--shflags=-Wl,-rpath,$ORIGIN:{libdir}" in configure
    stamp = read_stamp(prefix)
    assert stamp["ccl"] is True
    assert stamp["nccl"]["source"] == "nvidia-nccl-cu13 2.28.3"
    assert stamp["nccl"]["library"] == str(libdir / "libnccl.so.2")
    assert "--ccl=y" in stamp["flags"]
    assert not Path(env["NCCL_ROOT"]).exists()  # the scratch root went with the build dir
    assert install.is_up_to_date(prefix, "nvidia", ccl=True)
    steps.clear()
    install.build("nvidia", prefix, sdist=sdist, ccl=True)  # up to date: nothing runs
    install.build("nvidia", prefix, sdist=sdist)
    assert steps == []
