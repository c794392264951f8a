"""Headless Chromium: screenshots and the rendered DOM of a report, fully offline."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

# No network, no updates, no first-run UI; --no-sandbox because CI runs as root.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--hide-scrollbars",
         "--disable-extensions", "--disable-sync", "--mute-audio")
NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str | None:
    """$INFINILM_CHROMIUM, else the first of chromium / chromium-browser / chrome on PATH."""
    explicit = os.environ.get("INFINILM_CHROMIUM")
    if explicit:
        return explicit if shutil.which(explicit) else None
    return next((p for p in map(shutil.which, NAMES) if p), None)


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise BrowserError("chromium not found: install it (Debian: apt-get install -y "
                           "--no-install-recommends chromium) or set INFINILM_CHROMIUM")
    # A fresh profile each time: no state from earlier runs, no lock held by another one.
    with tempfile.TemporaryDirectory(prefix="infinilm-chromium-") as profile:
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}", *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BrowserError(f"chromium timed out after {timeout} s: {' '.join(cmd)}") \
                from None
    if proc.returncode != 0:
        raise BrowserError(f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def screenshot(html: str | Path, png: str | Path, width: int = 1400, height: int = 1800,
               timeout: float = 120) -> Path:
    """The first `height` pixels of the page at `width`, as PNG."""
    png = Path(png).resolve()
    tmp = png.with_name(f".{png.name}.tmp.png")
    tmp.unlink(missing_ok=True)
    try:
        _run([f"--window-size={width},{height}", f"--screenshot={tmp}",
              Path(html).resolve().as_uri()], timeout)
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise BrowserError(f"chromium wrote no screenshot to {tmp}")
        os.replace(tmp, png)
    finally:
        tmp.unlink(missing_ok=True)
    return png


def dump_dom(html: str | Path, timeout: float = 120) -> str:
    """The DOM after Chromium parsed and laid out the page, serialized."""
    return _run(["--dump-dom", Path(html).resolve().as_uri()], timeout).stdout
