"""Library discovery picks the device's backend: `set_default_backend` (what the conformance
plugin and the CLI call with the device type) selects that backend's default prefix, and
INFINI_ROOT, then INFINILM_BACKEND, still win over it."""

from __future__ import annotations

from pathlib import Path

import pytest

from infinilm_models.build.prefix import default_prefix
from infinilm_models.runtime import discovery, library


@pytest.fixture
def prefixes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Fake cpu and nvidia builds at their default prefixes, under a private cache home."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("INFINI_ROOT", raising=False)
    monkeypatch.delenv("INFINILM_BACKEND", raising=False)
    monkeypatch.setattr(discovery, "_default_backend", None)
    monkeypatch.setattr(discovery, "_loaded", None)  # as if nothing were loaded yet
    out = {}
    for backend in ("cpu", "nvidia"):
        root = default_prefix(backend)
        (root / "lib").mkdir(parents=True)
        (root / "lib" / "libinfiniop.so").write_bytes(b"")
        out[backend] = root
    return out


def test_default_is_cpu(prefixes: dict[str, Path]) -> None:
    assert library.find_root() == prefixes["cpu"]


def test_device_backend_selects_its_prefix(prefixes: dict[str, Path]) -> None:
    library.set_default_backend("nvidia")
    assert library.find_root() == prefixes["nvidia"]
    library.set_default_backend(None)
    assert library.find_root() == prefixes["cpu"]


def test_environment_wins(prefixes: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                          tmp_path: Path) -> None:
    library.set_default_backend("nvidia")
    monkeypatch.setenv("INFINILM_BACKEND", "cpu")
    assert library.find_root() == prefixes["cpu"]
    vendor = tmp_path / "vendor"
    (vendor / "lib").mkdir(parents=True)
    (vendor / "lib" / "libinfiniop.so").write_bytes(b"")
    monkeypatch.setenv("INFINI_ROOT", str(vendor))
    assert library.find_root() == vendor


def test_missing_build_names_the_backend(prefixes: dict[str, Path],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (prefixes["nvidia"] / "lib" / "libinfiniop.so").unlink()
    library.set_default_backend("nvidia")
    with pytest.raises(library.LibraryNotFound) as info:
        library.find_root()
    message = str(info.value)
    assert str(prefixes["nvidia"]) in message and "--backend nvidia" in message
    assert "chosen by the device" in message


def test_cannot_switch_after_loading(prefixes: dict[str, Path],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discovery, "_loaded", prefixes["cpu"])
    library.set_default_backend("cpu")  # the same build: fine
    with pytest.raises(RuntimeError, match="already loaded"):
        library.set_default_backend("nvidia")
    assert library.default_backend() == "cpu"


@pytest.mark.parametrize("bad", ["", "nv idia", 3, "../x"])
def test_bad_backend_name(prefixes: dict[str, Path], bad: object) -> None:
    with pytest.raises(ValueError, match="backend name"):
        library.set_default_backend(bad)  # type: ignore[arg-type]
