"""Building any InfiniCore: the source's identity (PyPI sdist, `git archive` tarball, a
tree), the recipe's adaptations to the tree in hand (stand-ins, the arch option, cuDNN,
an op subset), and the command line around them. No compiler runs here: the trees are
small stand-ins with the files the recipe reads."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from infinilm_models.build import cli, patches, source
from infinilm_models.build import ops as build_ops
from infinilm_models.build import recipe as build_recipe
from infinilm_models.build.errors import BuildError
from infinilm_models.build.prefix import default_prefix
from infinilm_models.build.vendor import VendorLib
from infinilm_models.runtime import capabilities


def make_tree(root: Path, *, ops: dict[str, dict[str, str]] | None = None,
              xmake: str = 'add_requires("boost", {configs = {stacktrace = true}})\n'
                           'add_requires("pybind11")\noption("cuda_arch")\n',
              nvidia_lua: str = "target('infiniop-nvidia')\n") -> Path:
    """A source tree with xmake.lua, xmake/nvidia.lua and op folders
    (name -> {relative file: text})."""
    (root / "xmake").mkdir(parents=True)
    (root / "xmake.lua").write_text(xmake)
    (root / "xmake" / "nvidia.lua").write_text(nvidia_lua)
    (root / "pyproject.toml").write_text('[project]\nversion = "0.1.0"\n')
    for op, files in (ops or {"gemm": {"cpu/gemm_cpu.cc": "int g;"}}).items():
        folder = root / "src" / "infiniop" / "ops" / op
        folder.mkdir(parents=True)
        (folder / "operator.cc").write_text("// op\n")
        (folder / f"{op.split('/')[-1]}.h").write_text("// header\n")
        for rel, text in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(text)
    return root


def make_tarball(tree: Path, dest: Path, top: str, commit: str | None = None) -> Path:
    with tarfile.open(dest, "w:gz", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": commit} if commit else {}) as tar:
        tar.add(tree, arcname=top)
    return dest


COMMIT = "2cec6ce6b27a789bf47818b370defa47a271dcc4"


def test_git_archive_tarball_names_its_commit(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t")
    tb = make_tarball(tree, tmp_path / "InfiniCore-2cec6ce6.tar.gz", "InfiniCore-2cec6ce6", COMMIT)
    s = source.resolve(tb)
    assert (s.kind, s.key, s.slug, s.top_dir) == ("tarball", f"git:{COMMIT}", "git-2cec6ce6",
                                                  "InfiniCore-2cec6ce6")
    assert s.version == "0.1.0" and s.sha256 == source.sha256_file(tb)
    assert "git 2cec6ce6" in s.label
    # a folder holding one tarball (and its README) is that tarball
    (tmp_path / "README.md").write_text("x")
    assert source.resolve(tmp_path).key == s.key
    assert default_prefix("cpu", s).name == "infinicore-git-2cec6ce6-cpu"
    assert default_prefix("cpu").name == "infinicore-0.1.0-cpu"


def test_any_top_directory_and_no_commit(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t")
    s = source.resolve(make_tarball(tree, tmp_path / "vendor.tgz", "whatever-name"))
    assert s.kind == "tarball" and s.git_commit is None
    assert s.key == f"sha256:{s.sha256}" and s.slug == f"src-{s.sha256[:12]}"


def test_pypi_sdist_is_the_release(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t")
    (tree / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: infinicore\nVersion: 0.1.0\n")
    s = source.resolve(make_tarball(tree, tmp_path / "infinicore-0.1.0.tar.gz",
                                    "infinicore-0.1.0"))
    assert (s.kind, s.key, s.slug) == ("pypi", "pypi:0.1.0", "0.1.0")


def test_tree_identity_follows_git(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t")
    plain = source.resolve(tree)
    assert plain.kind == "tree" and plain.key == f"sha256:{plain.sha256}"
    (tree / "build").mkdir()
    (tree / "build" / "out.o").write_text("build output")  # not part of the identity
    assert source.resolve(tree).sha256 == plain.sha256
    git = ["git", "-C", str(tree), "-c", "user.email=a@b", "-c", "user.name=a"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    clean = source.resolve(tree)
    assert clean.key.startswith("git:") and clean.git_dirty is False
    (tree / "xmake.lua").write_text("-- changed\n")
    dirty = source.resolve(tree)
    assert dirty.git_dirty is True and dirty.key.startswith("sha256:")
    assert "local changes" in dirty.label


def _bad(tmp_path: Path, what: str) -> Path:
    if what == "missing":
        return tmp_path / "nowhere"
    if what == "empty_dir":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty"
    if what == "zip":
        (tmp_path / "x.zip").write_text("")
        return tmp_path / "x.zip"
    (tmp_path / "bad.tar.gz").write_bytes(b"not a tarball")
    return tmp_path / "bad.tar.gz"


@pytest.mark.parametrize("what, message", [
    ("missing", "no such file"), ("empty_dir", "no xmake.lua"),
    ("zip", "expected a source directory"), ("corrupt", "cannot be read as a tarball"),
])
def test_bad_sources_are_named(tmp_path: Path, what: str, message: str) -> None:
    with pytest.raises(source.SourceError, match=message) as info:
        source.resolve(_bad(tmp_path, what))
    assert str(tmp_path) in str(info.value)


def test_tarball_without_xmake_lua(tmp_path: Path) -> None:
    dest = tmp_path / "x.tar.gz"
    with tarfile.open(dest, "w:gz") as tar:
        data = b"hi"
        info = tarfile.TarInfo("top/README.md")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(source.SourceError, match="no top/xmake.lua"):
        source.resolve(dest)


def _upstream_like(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "up", ops={
        "gemm": {"cpu/gemm_cpu.cc": "", "nvidia/gemm_nvidia.cu": "cublas"},
        "avg_pool3d": {"nvidia/avg_pool3d_nvidia.cu": "cudnnPoolingForward(h);"},
        "conv": {"nvidia/conv_nvidia.cu": "#ifdef ENABLE_CUDNN_API\ncudnnConv();\n#endif"},
        "bce": {"nvidia/bce.cuh": "// cudnnHandle_t: only a comment\n"},
        "awq_marlin_gemm": {"nvidia/awq.cu": "", "nvidia/generate_kernels.py": ""},
        "quant/per_tensor_quant_int8": {"cpu/q.cc": ""},
    }, nvidia_lua='local h = "kernel_selector.h"\n')


def test_op_folders_and_cudnn_use(tmp_path: Path) -> None:
    src = _upstream_like(tmp_path)
    found = build_ops.op_dirs(src)
    assert set(found) == {"gemm", "avg_pool3d", "conv", "bce", "awq_marlin_gemm",
                          "quant/per_tensor_quant_int8"}
    assert build_ops.cudnn_use(found["avg_pool3d"]) == "required"
    assert build_ops.cudnn_use(found["conv"]) == "optional"
    assert build_ops.cudnn_use(found["bce"]) is None  # a comment is no use
    assert build_ops.cudnn_use(found["gemm"]) is None


def _plan(src: Path, backend: str, ops: str = "auto", cudnn=None, arch: str = "native"):
    return build_recipe.plan_recipe(src, source.resolve(src), backend, arch, False, ops, None,
                                    cudnn)


def test_nvidia_upstream_builds_the_harness_ops(tmp_path: Path) -> None:
    src = _upstream_like(tmp_path)
    recipe = _plan(src, "nvidia")
    assert recipe.ops_built == ["gemm"]
    assert set(recipe.ops_left_out) == {"avg_pool3d", "conv", "bce", "awq_marlin_gemm",
                                        "quant/per_tensor_quant_int8"}
    assert all("harness" in why for why in recipe.ops_left_out.values())
    # left-out ops lose their compiled sources, keep their headers
    assert not (src / "src/infiniop/ops/conv/operator.cc").exists()
    assert not (src / "src/infiniop/ops/conv/nvidia/conv_nvidia.cu").exists()
    assert (src / "src/infiniop/ops/conv/conv.h").exists()
    assert (src / "src/infiniop/ops/gemm/nvidia/gemm_nvidia.cu").exists()
    # awq's kernel generator is not run for an op that is not built
    assert (src / "src/infiniop/ops/awq_marlin_gemm/nvidia/kernel_selector.h").is_file()
    assert "--cudnn=n" in recipe.flags  # no op built needs it
    lines = "\n".join(recipe.adaptations)
    assert "boost" in lines and "ops left out: 5 of 6" in lines


def test_cudnn_needed_and_absent_names_the_op(tmp_path: Path) -> None:
    recipe = _plan(_upstream_like(tmp_path), "nvidia", ops="all")
    assert "avg_pool3d" not in recipe.ops_built and "conv" in recipe.ops_built
    assert "needs cuDNN" in recipe.ops_left_out["avg_pool3d"]
    assert "nvidia-cudnn-cu13" in recipe.ops_left_out["avg_pool3d"]
    assert "--cudnn=n" in recipe.flags


def test_cudnn_present_is_used(tmp_path: Path) -> None:
    lib = tmp_path / "cudnn" / "lib" / "libcudnn.so.9"
    lib.parent.mkdir(parents=True)
    lib.write_text("")
    cudnn = VendorLib(tmp_path / "cudnn" / "include", lib, "nvidia-cudnn-cu13 9.9")
    recipe = _plan(_upstream_like(tmp_path), "nvidia", ops="all", cudnn=cudnn)
    assert "avg_pool3d" in recipe.ops_built and "--cudnn=y" in recipe.flags
    assert recipe.flags[-1] == f"--shflags=-Wl,-rpath,$ORIGIN:{lib.parent}"
    assert any("cuDNN from nvidia-cudnn-cu13 9.9 for avg_pool3d, conv" in a
               for a in recipe.adaptations)


def test_cpu_builds_every_op(tmp_path: Path) -> None:
    recipe = _plan(_upstream_like(tmp_path), "cpu")
    assert len(recipe.ops_built) == 6 and recipe.ops_left_out == {}
    assert "--cudnn=n" not in recipe.flags


def test_op_list_is_checked(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="no such op .*: nope"):
        _plan(_upstream_like(tmp_path), "cpu", ops="gemm,nope")
    with pytest.raises(BuildError, match="--ops"):
        build_ops.check_ops("Gemm;rm")


def test_cuda_arch_the_way_the_tree_expects(tmp_path: Path) -> None:
    upstream = _upstream_like(tmp_path)
    recipe = _plan(upstream, "nvidia", arch="sm_90")
    assert "--cuda_arch=sm_90" in recipe.flags
    old = make_tree(tmp_path / "old", xmake="", nvidia_lua='add_cugencodes("native")\n')
    flag, line = patches.set_cuda_arch(old, "sm_90")
    assert flag is None and "sm_90 instead of native" in line
    assert 'add_cugencodes("sm_90")' in (old / "xmake" / "nvidia.lua").read_text()
    neither = make_tree(tmp_path / "neither", xmake="", nvidia_lua="")
    with pytest.raises(BuildError, match="--cuda-arch native"):
        patches.set_cuda_arch(neither, "sm_90")


def test_literal_patches_strict_only_for_the_release(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "t")
    with pytest.raises(BuildError, match="sdist changed"):
        patches.apply_patches(src, "nvidia", strict=True)
    lines = patches.apply_patches(src, "nvidia", strict=False)
    assert len(lines) == 2 and all("not needed here" in line for line in lines)
    target = src / patches.PATCHES[0].path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"\xef\xbb\xbfauto m = cub::Max()(a, b);\n")
    patches.apply_patches(src, "nvidia", strict=False)
    text = target.read_bytes()
    assert text.startswith(b"\xef\xbb\xbf#include <cuda/functional>")
    assert b"cuda::maximum<>()" in text


def test_recipe_digest_depends_on_the_source() -> None:
    pypi = build_recipe.recipe_digest("cpu")
    assert pypi == build_recipe.recipe_digest("cpu", source_key="pypi:0.1.0")
    assert build_recipe.recipe_digest("cpu", source_key=f"git:{COMMIT}") != pypi
    assert build_recipe.recipe_digest("cpu", source_key=f"git:{COMMIT}", ops="harness") != \
        build_recipe.recipe_digest("cpu", source_key=f"git:{COMMIT}", ops="all")


def test_missing_source_skips_or_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    gone = tmp_path / "gone.tar.gz"
    monkeypatch.delenv("CI", raising=False)
    marker = tmp_path / "ran"
    argv = ["--source", str(gone), "--missing-source", "auto", "--", "touch", str(marker)]
    assert cli.main(argv) == 0
    assert "SKIPPED: no InfiniCore source" in capsys.readouterr().out
    assert not marker.exists()
    monkeypatch.setenv("CI", "true")  # on a CI runner a missing source fails the job
    assert cli.main(argv) == 1
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["--source", str(gone)]) == 1  # default: error


def test_command_runs_with_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "vendor"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "libinfiniop.so").write_bytes(b"")
    monkeypatch.setenv("INFINI_ROOT", str(root))
    out = tmp_path / "seen"
    rc = cli.main(["--unless-infini-root", "--", "sh", "-c",
                     f'echo "$INFINI_ROOT" > {out}; exit 7'])
    assert rc == 7 and out.read_text().strip() == str(root)


def test_exports_of_a_real_library() -> None:
    """The ELF reader against the system's C library (always there): a few functions every
    libc exports, none of the undefined ones."""
    libc = next((p for p in (Path("/lib/x86_64-linux-gnu/libc.so.6"), Path("/lib64/libc.so.6"),
                             Path("/lib/aarch64-linux-gnu/libc.so.6")) if p.is_file()), None)
    if libc is None:
        pytest.fail("no libc.so.6 at the usual places")
    names = capabilities.elf_exports(libc)
    assert {"malloc", "free", "printf"} <= names
    with pytest.raises(capabilities.ExportsUnknown):
        capabilities.elf_exports(Path(__file__))


def test_ops_of_exports() -> None:
    exports = frozenset({"infiniopCreateGemmDescriptor", "infiniopGemm",
                         "infiniopCreateRandomSampleBatchDescriptor", "infiniopRandomSampleBatch",
                         "infiniopCreateHalfDescriptor"})
    assert capabilities.ops_of(exports) == {"Gemm", "RandomSampleBatch"}


def test_identity_matching() -> None:
    ident = capabilities.BuildIdentity(key=f"git:{COMMIT}", label="x")
    assert ident.matches("git:2cec6ce6") and ident.matches(f"git:{COMMIT}")
    assert not ident.matches("git:2cec6c")  # too short to name a commit
    assert not ident.matches("pypi:0.1.0") and not ident.matches("git:deadbeef")
    pypi = capabilities.BuildIdentity(key="pypi:0.1.0", label="x")
    assert pypi.matches("pypi:0.1.0") and not pypi.matches("pypi:0.1")


def test_identity_without_a_stamp(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libinfiniop.so").write_bytes(b"junk")
    b = capabilities.read_build(tmp_path)
    assert b.identity.key.startswith("exports:") and not b.identity.stamped
    assert b.exports_known is False and "no stamp" in b.identity.label
