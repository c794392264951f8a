"""Every InfiniCore backend, by its name or an alias: the xmake option read from the tree
in hand (both real trees: the PyPI 0.1.0 sdist and the upstream snapshot), `--xmake-option`
checked where it enters, `--print-config` without building, the stamp and digest keyed by
backend and options, and the runtime's "not found" hint for every device name. Nothing is
compiled here (cpu is built for real by tox; nvidia on the GPU machine)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.ci import NOT_CONFIGURED, upstream_source
from infinilm_models.build import backends, cli, config, install, recipe, source, vendor, xmake
from infinilm_models.build.errors import BuildError
from infinilm_models.build.fetch import fetch_sdist, unpack
from infinilm_models.build.prefix import (
    BACKEND_ALIASES,
    BACKENDS,
    PYPI_BACKENDS,
    cache_home,
    default_prefix,
    read_stamp,
)
from infinilm_models.build.request import check_backend, make_request
from infinilm_models.runtime import discovery, library

REPO = Path(__file__).resolve().parents[1]
RPATH = "'--shflags=-Wl,-rpath,$ORIGIN'"

# What each tree's xmake.lua calls each backend: read by hand from the two trees, the
# facts the reader must find. 0.1.0 builds Hygon as Sugon, through the NVIDIA target.
OPTIONS = {
    "0.1.0": {"cpu": [], "nvidia": ["nv-gpu"], "cambricon": ["cambricon-mlu"],
              "ascend": ["ascend-npu"], "metax": ["metax-gpu"], "moore": ["moore-gpu"],
              "iluvatar": ["iluvatar-gpu"], "kunlun": ["kunlun-xpu"],
              "hygon": ["sugon-dcu", "nv-gpu"], "qy": None, "ali": None},
    "upstream": {"cpu": [], "nvidia": ["nv-gpu"], "cambricon": ["cambricon-mlu"],
                 "ascend": ["ascend-npu"], "metax": ["metax-gpu"], "moore": ["moore-gpu"],
                 "iluvatar": ["iluvatar-gpu"], "kunlun": ["kunlun-xpu"],
                 "hygon": ["hygon-dcu"], "qy": ["qy-gpu"], "ali": ["ali-ppu"]},
}
# Where each vendor's SDK is looked for (an environment variable its xmake file reads).
SDK_VARIABLE = {"cambricon": "NEUWARE_HOME", "ascend": "ASCEND_TOOLKIT_HOME",
                "metax": "MACA_HOME", "moore": "MUSA_HOME", "kunlun": "KUNLUN_HOME"}


def _trees() -> list:
    """The real trees to read. 0.1.0 is always there: the build tool's own copy of the
    sdist (fetched through pip's index configuration when absent, as a build does).
    Upstream where configured (conformance.ci.upstream_source: the upstream run's rule);
    not configured, its cases are recorded unsupported with the reason, under CI too."""
    if upstream_source() is not None:
        return ["0.1.0", "upstream"]
    return ["0.1.0", pytest.param("upstream", marks=pytest.mark.skip(reason=NOT_CONFIGURED))]


@pytest.fixture(scope="module", params=_trees())
def tree(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> tuple[str, source.Source, Path]:
    """(which, its Source, the tree unpacked once for every backend's question)."""
    if request.param == "0.1.0":
        path = fetch_sdist(cache_home() / "sdist")
    else:
        path = upstream_source()
        if path is None or not path.exists():
            pytest.fail(f"no upstream InfiniCore at {path}: INFINILM_UPSTREAM_SOURCE names "
                        "a path that does not exist")
    src = source.resolve(path)
    return request.param, src, unpack(src, tmp_path_factory.mktemp(f"tree-{request.param}"))


@pytest.fixture
def no_cudnn(monkeypatch: pytest.MonkeyPatch) -> None:
    """The configure line does not depend on whether this machine has cuDNN."""
    monkeypatch.delenv("CUDNN_ROOT", raising=False)
    monkeypatch.setattr(vendor, "CUDNN_DISTRIBUTIONS", ("no-such-cudnn-package",))


def _lines(out: list[str] | str) -> dict[str, str]:
    text = out if isinstance(out, str) else "\n".join(out)
    return {k: v.strip() for k, _, v in (ln.partition(":") for ln in text.splitlines()
                                          if not ln.startswith(" "))}


@pytest.mark.parametrize("backend", BACKENDS)
def test_print_config_of_every_backend(tree, backend: str, no_cudnn: None) -> None:
    which, src, unpacked = tree
    options = OPTIONS[which][backend]
    req = make_request(backend, source=src)
    if options is None:
        with pytest.raises(BuildError, match=f"has no {backend} backend .*nvidia \\(--nv-gpu\\)"):
            config.describe(req, unpacked)
        return
    out = _lines(config.describe(req, unpacked))
    expected = ["xmake f -c -y -m release --cpu=y --omp=y", *(f"--{o}=y" for o in options),
                *(["--cudnn=n"] if backend == "nvidia" else []), RPATH]
    assert out["configure"] == " ".join(expected)
    assert out["prefix"] == str(default_prefix(backend, src).resolve())
    assert out["backend"].startswith(f"{backend} (--{options[0] if options else 'cpu'}, "
                                     "from xmake.lua (ENABLE_")
    if backend in SDK_VARIABLE:
        assert f"${SDK_VARIABLE[backend]}" in out["needs"]
    assert out["recipe digest"] == req.digest()


def test_the_release_backends_are_its_xmake_options(tree) -> None:
    which, _, unpacked = tree
    found = backends.device_options(unpacked)
    assert sorted(found) == sorted(PYPI_BACKENDS if which == "0.1.0" else BACKENDS)


@pytest.mark.parametrize("name", sorted({*BACKENDS, *BACKEND_ALIASES, "sugon", "HYGON"}))
def test_hint_builds_every_device_name(tree, name: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, no_cudnn: None) -> None:
    """The runtime's "not found" message names a command that the build tool accepts and
    that configures that device's backend on the source it names."""
    which, src, unpacked = tree
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("INFINI_ROOT", raising=False)
    monkeypatch.delenv("INFINILM_BACKEND", raising=False)
    monkeypatch.setattr(discovery, "_loaded", None)
    monkeypatch.setattr(discovery, "_default_backend", None)
    library.set_default_backend(name)
    with pytest.raises(library.LibraryNotFound) as info:
        library.find_root()
    message = str(info.value)
    command = shlex.split(message.split("Build them with `", 1)[1].split("`", 1)[0])
    assert command[:3] == ["python", "-m", "infinilm_models.build"]
    args = cli._parser(cli.PROG).parse_args(command[3:])
    needs_source = args.source is not None
    assert needs_source == (check_backend(name) not in PYPI_BACKENDS)
    if needs_source != (which == "upstream"):
        return  # the command names the other tree
    req = make_request(args.backend, source=src)
    assert _lines(config.describe(req, unpacked))["backend"].startswith(check_backend(name))


def test_print_config_command_line(tree, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    """The whole command: exit 0, nothing built, the option in place. The release as its
    tarball (unpacked by the command), upstream as a source tree (read in place: unpacking
    its 3,800 files twice more would cost seconds)."""
    which, src, unpacked = tree
    given = str(src.path if which == "0.1.0" else unpacked)
    prefix = tmp_path / "prefix"
    argv = ["--backend", "musa", "--source", given, "--prefix", str(prefix),
            "--print-config", "--xmake-option", "omp=n"]
    assert cli.main(argv) == 0
    out = _lines(capsys.readouterr().out)
    assert out["configure"].startswith("xmake f -c -y -m release --cpu=y --moore-gpu=y --omp=n ")
    assert out["xmake options"] == "omp=n" and out["prefix"] == str(prefix.resolve())
    assert not prefix.exists()
    # upstream declares use-mc; 0.1.0 does not: a one-line error naming it
    rc = cli.main(["--backend", "metax", "--source", str(unpacked), "--print-config",
                   "--xmake-option", "use-mc=y"])
    captured = capsys.readouterr()
    if which == "upstream":
        assert rc == 0 and "--metax-gpu=y --use-mc=y" in _lines(captured.out)["configure"]
    else:
        assert rc == 1 and captured.err.count("\n") == 1
        assert "use-mc=y" in captured.err and "declares no option 'use-mc'" in captured.err


@pytest.mark.parametrize("value, message", [
    ("use-mc", "expected KEY=VALUE"), ("=y", "expected KEY=VALUE"),
    ("use mc=y", "expected KEY=VALUE"), ("use-mc=", "expected KEY=VALUE"),
    ("ccl=y", "use --ccl"), ("cuda_arch=sm_90", "use --cuda-arch"),
    ("shflags=-s", "RUNPATH"), ("metax-gpu=y", "use --backend"),
])
def test_bad_xmake_option_is_one_line(value: str, message: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(BuildError, match=message):
        backends.parse_xmake_option(value)
    assert cli.main(["--xmake-option", value, "--print-config",
                     "--source", str(_fake_tree(tmp_path))]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and repr(value) in err and message in err


def test_backend_names_and_aliases() -> None:
    expect = {"cuda": "nvidia", "gpu": "nvidia", "mlu": "cambricon", "npu": "ascend",
              "musa": "moore", "xpu": "kunlun", "sugon": "hygon", "dcu": "hygon",
              "ppu": "ali", "HYGON": "hygon", "qy": "qy"}
    assert {name: check_backend(name) for name in expect} == expect
    assert default_prefix("cuda") == default_prefix("nvidia")
    assert default_prefix("sugon").name == "infinicore-0.1.0-hygon"
    with pytest.raises(BuildError, match="'tpu': unknown backend; backends: cpu, nvidia"):
        check_backend("tpu")
    with pytest.raises(BuildError, match="this recipe provides InfiniCCL.* only for nvidia"):
        make_request("metax", ccl=True)


def test_digest_follows_backend_and_options() -> None:
    digests = {recipe.recipe_digest(b) for b in BACKENDS}
    assert len(digests) == len(BACKENDS)
    plain = recipe.recipe_digest("metax")
    assert recipe.recipe_digest("metax", xmake_options=(("use-mc", "y"),)) != plain
    assert recipe.recipe_digest("metax", xmake_options=(("use-mc", "n"),)) != \
        recipe.recipe_digest("metax", xmake_options=(("use-mc", "y"),))


def _fake_tree(root: Path, xmake_lua: str = "", header: str = "") -> Path:
    """A tree the recipe can read: xmake.lua, an optional infinicore.h, one op."""
    (root / "include").mkdir(parents=True, exist_ok=True)
    (root / "xmake.lua").write_text(xmake_lua)
    if header:
        (root / "include" / "infinicore.h").write_text(header)
    op = root / "src" / "infiniop" / "ops" / "gemm"
    op.mkdir(parents=True, exist_ok=True)
    (op / "operator.cc").write_text("// op\n")
    return root


# A vendor's fork that builds MetaX with an option of its own name and reads its SDK
# from a variable of its own: the option comes from the tree, not from our table.
FORK_XMAKE = '''option("cpu")
option_end()
option("omp")
option_end()
option("maca-gpu")
option_end()
option("maca-arch")
option_end()
if has_config("cpu") then
    add_defines("ENABLE_CPU_API")
end
if has_config("maca-gpu") then
    add_defines("ENABLE_METAX_API")
    includes("xmake/maca.lua")
end
'''
FORK_HEADER = "INFINI_DEVICE_CPU = 0,\nINFINI_DEVICE_METAX = 4,\n"


def test_option_read_from_a_fork(tmp_path: Path, no_cudnn: None) -> None:
    tree = _fake_tree(tmp_path / "fork", FORK_XMAKE, FORK_HEADER)
    (tree / "xmake").mkdir()
    (tree / "xmake" / "maca.lua").write_text('local sdk = os.getenv("FORK_MACA_SDK")\n')
    lines = config.describe(make_request("metax", source=tree, xmake_options=["maca-arch=x2"]))
    out = _lines(lines)
    assert out["configure"] == ("xmake f -c -y -m release --cpu=y --omp=y --maca-gpu=y "
                                f"--maca-arch=x2 {RPATH}")
    assert "$FORK_MACA_SDK" in out["needs"]
    assert "  --backend metax: xmake option --maca-gpu (from xmake.lua, ENABLE_METAX_API)" \
        in lines
    with pytest.raises(BuildError, match="has no ascend backend .*metax \\(--maca-gpu\\)"):
        config.describe(make_request("ascend", source=tree))
    with pytest.raises(BuildError, match="maca-gpu=y: a device backend's option"):
        config.describe(make_request("cpu", source=tree, xmake_options=["maca-gpu=y"]))


def test_builtin_table_where_the_tree_says_nothing(tmp_path: Path, no_cudnn: None) -> None:
    tree = _fake_tree(tmp_path / "bare")
    lines = config.describe(make_request("ali", source=tree))
    assert "--ali-ppu=y" in _lines(lines)["configure"]
    assert "  --backend ali: xmake option --ali-ppu (from the built-in table)" in lines


def test_stamp_records_backend_and_options(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A metax build with the xmake steps faked (no MetaX SDK here): what the stamp says
    and that other options are another build."""
    tree = _fake_tree(tmp_path / "fork", FORK_XMAKE, FORK_HEADER)
    monkeypatch.setattr(xmake, "check_tools", lambda backend: "xmake")
    configured: list[list[str]] = []

    def fake_step(cmd, cwd, env, step, log_file):
        if step == "xmake configure":
            configured.append(cmd)
        if step.startswith("xmake install"):
            lib = Path(env["INFINI_ROOT"]) / "lib"
            lib.mkdir(parents=True, exist_ok=True)
            for name in install.LIBRARIES:
                (lib / name).write_bytes(b"")

    monkeypatch.setattr(xmake, "run_step", fake_step)
    prefix = install.build("metax", tmp_path / "prefix", source=tree,
                           xmake_options=["maca-arch=x2"])
    stamp = read_stamp(prefix)
    assert stamp["backend"] == "metax" and stamp["xmake_options"] == ["maca-arch=x2"]
    assert stamp["backend_option"]["option"] == "maca-gpu"
    assert stamp["backend_option"]["define"] == "ENABLE_METAX_API"
    assert stamp["flags"] == configured[0][6:]
    assert "--maca-gpu=y" in stamp["flags"] and "--maca-arch=x2" in stamp["flags"]
    key = source.resolve(tree).key
    assert install.is_up_to_date(prefix, "metax", source_key=key,
                                 xmake_options=(("maca-arch", "x2"),))
    assert not install.is_up_to_date(prefix, "metax", source_key=key)
    assert not install.is_up_to_date(prefix, "metax", source_key=key,
                                     xmake_options=(("maca-arch", "x3"),))


@pytest.mark.parametrize("module", ["infinilm_models.build", "infinilm_models.runtime.build"])
def test_both_module_names_run(module: str, tmp_path: Path) -> None:
    """`python -m` under the new name and the old one, as a user types it."""
    tree = _fake_tree(tmp_path / "t")
    proc = subprocess.run([sys.executable, "-m", module, "--backend", "npu", "--source",
                           str(tree), "--print-config"], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert "--ascend-npu=y" in _lines(proc.stdout)["configure"]
    assert "Warning" not in proc.stderr


def test_runtime_imports_only_the_prefix() -> None:
    """Every runtime module imported (but runtime.build, the tool's old name): of the
    build tool, only `prefix` is loaded."""
    code = ("import importlib, pkgutil, sys\n"
            "import infinilm_models.runtime as r\n"
            "for m in pkgutil.walk_packages(r.__path__, r.__name__ + '.'):\n"
            "    if m.name != 'infinilm_models.runtime.build':\n"
            "        importlib.import_module(m.name)\n"
            "print(' '.join(sorted(n for n in sys.modules if n.startswith('infinilm_models.'))))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    loaded = proc.stdout.split()
    assert "infinilm_models.runtime.library" in loaded
    assert [n for n in loaded if n.startswith("infinilm_models.build")] == [
        "infinilm_models.build", "infinilm_models.build.prefix"]
