"""The parallel layouts and which of them each checkpoint's shapes allow.

Plain data and functions (no fixtures): conftest.py parametrizes `test_model_parallel` from
here, and the test reads the same table. A checkpoint whose config.json cannot be read is
one planned check with status `error` naming the file and the field; one whose shapes fit
no layout is one `unsupported` check with the numbers, never an empty parametrization.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

LAYOUTS = {"tp2": (2, 1), "tp4": (4, 1), "pp2": (1, 2), "tp2pp2": (2, 2)}
NO_LAYOUT = "none"  # the layout id of a checkpoint no layout fits
INVALID = "invalid"  # the layout id of a checkpoint whose config cannot be read


def applicable(config: dict, tp: int, pp: int) -> bool:
    nh = config["num_attention_heads"]
    nkv = config.get("num_key_value_heads") or nh
    return (nh % tp == 0 and (nkv % tp == 0 or tp % nkv == 0)
            and config["intermediate_size"] % tp == 0 and config["num_hidden_layers"] >= pp)


def why_none(config: dict) -> str:
    nh = config["num_attention_heads"]
    return (f"no tensor/pipeline layout of {', '.join(LAYOUTS)} fits: "
            f"{nh} attention heads, {config.get('num_key_value_heads') or nh} KV heads, "
            f"intermediate_size {config['intermediate_size']}, "
            f"{config['num_hidden_layers']} layers (tp must divide the heads and the "
            "intermediate size; pp needs a layer per stage)")


def config_of(name: str) -> dict:
    """The shapes of a model name's config, without generating fixtures; a local
    directory's config.json through the model's own validation (ConfigError names the
    file, the field and the value)."""
    if name.startswith("tiny-"):
        from infinilm_fixtures.tiny import VARIANTS

        return asdict(VARIANTS[name.removeprefix("tiny-")])
    if name == "smollm2":
        return {"num_attention_heads": 9, "num_key_value_heads": 3,
                "intermediate_size": 1536, "num_hidden_layers": 30}
    from infinilm_models.models.auto import load_config

    c = load_config(Path(name).expanduser())
    return {"num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads,
            "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_hidden_layers}


def layout_cases(names: list[str]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(model, layout) pairs to check, and {model: why} for the pairs whose layout is
    NO_LAYOUT or INVALID. (On the CPU, SmolLM2's pairs are planned and recorded
    unsupported, left to GPU runs: model/conftest.py.)"""
    pairs: list[tuple[str, str]] = []
    why: dict[str, str] = {}
    for name in names:
        try:
            config = config_of(name)
            fits = [lay for lay, (tp, pp) in LAYOUTS.items() if applicable(config, tp, pp)]
        except (ValueError, KeyError, TypeError, OSError) as e:
            pairs.append((name, INVALID))
            why[name] = f"{type(e).__name__}: {e}"
            continue
        if not fits:
            pairs.append((name, NO_LAYOUT))
            why[name] = why_none(config)
        pairs += [(name, lay) for lay in fits]
    return pairs, why
