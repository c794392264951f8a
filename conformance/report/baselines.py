"""The baseline store: what a run is compared with when no baseline is named.

reports/ is per clone (and gitignored); a CI runner keeps a cache directory instead. The
store (`--baseline-store DIR`, default $INFINILM_BASELINE_STORE or
~/.cache/infinilm-models/baselines) holds, per key:

    <store>/<suite>/<device kind>/<build>/<machine>/
        last-green/     results.json (+ benchmark.json), meta.json: the newest run that
                        was green and compared clean; replaced by each such run
        pinned-<scale>/ benchmark.json, meta.json: the performance baseline. Recorded by
                        the first green run with benchmarks at that scale; afterwards it
                        moves only on purpose (`infinilm-conformance baseline pin RUN`),
                        so a slowdown fails every run until someone decides otherwise,
                        and a creeping one (9% a run) adds up against a fixed point
        history.jsonl   one line per compared run, green or not: its benchmarks' medians
                        and verdicts (`bench-history` draws them)

The key: the suite (the CI job's name, e.g. `ci` or `bench`, else `default`: one
selection of checks), the device kind, the InfiniCore build key, and the machine id the
run recorded (`environment.machine_id`: $INFINILM_MACHINE_ID or the device's product and
CPU count). A red run is never recorded as green.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from conformance.record import RecordError, RunRecord
from conformance.results import build_slug, machine_id, slug

STORE_ENV = "INFINILM_BASELINE_STORE"
LAST_GREEN = "last-green"
HISTORY = "history.jsonl"


def default_store() -> Path:
    """$INFINILM_BASELINE_STORE, else baselines/ under the cache home InfiniCore builds
    use (~/.cache/infinilm-models, or $XDG_CACHE_HOME/infinilm-models)."""
    named = os.environ.get(STORE_ENV, "").strip()
    if named:
        return Path(named).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "infinilm-models" / "baselines"


@dataclass(frozen=True)
class Key:
    suite: str
    device: str
    build: str      # the InfiniCore identity key, e.g. pypi:0.1.0
    machine: str

    def folder(self, store: Path) -> Path:
        return Path(store) / slug(self.suite) / slug(self.device) / \
            build_slug(self.build, 16) / slug(self.machine, 96)

    def describe(self) -> str:
        return (f"suite {self.suite}, device {self.device}, build {self.build}, "
                f"machine {self.machine}")


def key_of(run: RunRecord, suite: str | None = None) -> Key:
    env = run.environment
    device = str(env.get("infini_device") or "unknown").split(":")[0]
    build = (env.get("infinicore") or {}).get("key") or "unidentified"
    machine = env.get("machine_id") or machine_id(env.get("device_name"), env.get("cpus"))
    job = (env.get("job") or {}).get("name") if isinstance(env.get("job"), dict) else None
    return Key(suite or job or "default", device, build, machine)


def _meta(run: RunRecord, run_dir: Path, key: Key) -> dict:
    env = run.environment
    return {"run_id": run.run_id, "verdict": run.verdict, "started_at": run.started_at,
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "git_commit": env.get("git_commit"), "run_dir": str(Path(run_dir).resolve()),
            "device_name": env.get("device_name"), "key": asdict(key)}


def _replace_dir(target: Path, files: dict[str, str]) -> None:
    """Write `files` (name -> text) as the folder `target`, replacing it as a whole: a
    reader sees the old folder or the new one, never a mix."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name, text in files.items():
            (tmp / name).write_text(text)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old.{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def last_green(store: Path, key: Key) -> Path | None:
    found = key.folder(store) / LAST_GREEN
    return found if (found / "results.json").is_file() else None


def pinned(store: Path, key: Key, scale: str) -> Path | None:
    found = key.folder(store) / f"pinned-{slug(scale)}"
    return found if (found / "benchmark.json").is_file() else None


def record_green(store: Path, key: Key, run: RunRecord, run_dir: Path,
                 benchmark: dict | None) -> Path:
    """`run` becomes the last green run of `key`. Refuses a red run."""
    if run.verdict != "pass":
        raise RecordError(f"run {run.run_id} is red (verdict {run.verdict}): never recorded "
                          "as green")
    files = {"results.json": run.to_json(),
             "meta.json": json.dumps(_meta(run, run_dir, key), indent=1) + "\n"}
    if benchmark is not None:
        files["benchmark.json"] = json.dumps(benchmark) + "\n"
    target = key.folder(store) / LAST_GREEN
    _replace_dir(target, files)
    return target


def pin(store: Path, key: Key, run: RunRecord, run_dir: Path, benchmark: dict,
        scale: str) -> Path:
    """`benchmark` (the run's benchmark JSON) becomes the performance baseline of `key` at
    `scale`."""
    meta = _meta(run, run_dir, key)
    meta["scale"] = scale
    target = key.folder(store) / f"pinned-{slug(scale)}"
    _replace_dir(target, {"benchmark.json": json.dumps(benchmark) + "\n",
                          "meta.json": json.dumps(meta, indent=1) + "\n"})
    return target


def read_meta(folder: Path) -> dict:
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def append_history(store: Path, key: Key, entry: dict) -> Path:
    path = key.folder(store) / HISTORY
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(entry, default=str) + "\n")
    return path


def history_files(store: Path) -> list[Path]:
    return sorted(Path(store).rglob(HISTORY))


def read_history(store: Path) -> list[dict]:
    """Every history line of the store (lines cut short by a dying process skipped)."""
    out = []
    for path in history_files(store):
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
    return out


def history_entry(run: RunRecord, run_dir: Path, key: Key, benchmark: dict | None,
                  perf_verdicts: dict[str, dict], green: bool, baseline_run: str | None,
                  pinned_run: str | None) -> dict:
    """One history line: the run, whether it was green, and per benchmark its median
    (and quartiles where the rounds were recorded) and its verdict against the pinned
    baseline."""
    from .benchfiles import partition, rounds_of
    from .perfstats import median

    entry = _meta(run, run_dir, key)
    entry.update(green=green, counts=run.counts, baseline_run=baseline_run,
                 pinned_run=pinned_run, scale=None, benchmarks={})
    if benchmark is not None:
        entry["scale"] = partition(benchmark)["scale"]
        for name, (med, data) in rounds_of(benchmark).items():
            row: dict = {"median": med, "rounds": len(data)}
            if len(data) >= 4:
                s = sorted(data)
                row["q1"], row["q3"] = median(s[: len(s) // 2]), median(s[(len(s) + 1) // 2:])
            row.update(perf_verdicts.get(name, {}))
            entry["benchmarks"][name] = row
    return entry
