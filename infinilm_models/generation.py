"""Autoregressive generation with the KV cache: greedy or sampled through InfiniCore's
random_sample op (temperature, top-k, top-p), reproducible from a seed.

Defaults come from the checkpoint as transformers reads them (`GenerationConfig.
from_pretrained`): its ``generation_config.json`` when there is one, else config.json's
generation fields (pad/bos/eos ids, do_sample, ...: transformers' `GenerationConfig.
from_model_config`). `generate` applies the model's defaults when it is given no config,
and explicit keyword arguments override either.

`generate` never takes a token from non-finite logits: a NaN/Inf among a step's logits
(of a row still generating) raises `NonFiniteLogitsError` naming the step, the row and the
first such value, and returns nothing (InfiniCore's argmax of NaN logits is some token,
and a run would print it as a result).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import files
from .arguments import check_bool, check_float, check_int, ragged_token_ids
from .errors import ConfigError
from .runtime import Tensor, ops

__all__ = ["GENERATION_CONFIG_FILE", "GenerationConfig", "GenerationOutput",
           "NonFiniteLogitsError", "generate"]

GENERATION_CONFIG_FILE = "generation_config.json"
MODEL_CONFIG_FILE = "config.json"

# Fields of generation_config.json we apply; others (repetition_penalty, ...) are ignored,
# as unknown config.json keys are. The length follows transformers: max_new_tokens if
# set, else max_length counts the prompt too, else 20 new tokens.
_FILE_FIELDS = ("eos_token_id", "bos_token_id", "pad_token_id", "do_sample", "temperature",
                "top_k", "top_p", "max_new_tokens", "max_length")
DEFAULT_NEW_TOKENS = 20


@dataclass(frozen=True)
class GenerationConfig:
    """How `generate` decodes; validated on construction (TypeError for a value of the
    wrong kind, ValueError for one out of range, each naming the field).

    temperature and top_p must be finite always; their ranges (temperature > 0, top_p in
    (0, 1]) are checked when `generate` samples with them, as transformers does: a config
    may hold ``do_sample=True, temperature=0`` (loading warns), sampling with it raises.

    The number of new tokens: ``max_new_tokens`` if set, else ``max_length`` minus the
    prompt's length (transformers' meaning: the whole sequence), else 20.
    """

    max_new_tokens: int | None = None
    max_length: int | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50  # 0 = no top-k limit
    top_p: float = 1.0
    seed: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    # Written after a row has stopped; None: the first eos id (transformers' rule).
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        for name in ("max_new_tokens", "max_length"):
            if getattr(self, name) is not None:
                put(name, check_int(getattr(self, name), name, minimum=1))
        put("do_sample", check_bool(self.do_sample, "do_sample"))
        temperature = check_float(self.temperature, "temperature")
        top_p = check_float(self.top_p, "top_p")
        put("top_k", check_int(self.top_k, "top_k", minimum=0))
        put("temperature", temperature)
        put("top_p", top_p)
        if self.seed is not None:
            put("seed", check_int(self.seed, "seed", minimum=0))
        eos = self.eos_token_ids
        if eos is None:
            eos = ()
        elif not isinstance(eos, (list, tuple)):
            eos = (eos,)
        put("eos_token_ids", tuple(check_int(e, f"eos_token_ids[{i}]", minimum=0)
                                   for i, e in enumerate(eos)))
        for name in ("bos_token_id", "pad_token_id"):
            if getattr(self, name) is not None:
                put(name, check_int(getattr(self, name), name, minimum=0))

    def sampling_problem(self) -> str | None:
        """Why this config cannot sample (None: it can, or it does not sample)."""
        if not self.do_sample:
            return None
        # random_sample divides by a float32 temperature: one that rounds to 0 there
        # would make every probability NaN.
        if not self.temperature > 0 or np.float32(self.temperature) == 0:
            return (f"temperature must be > 0 when sampling (and not 0 in float32), got "
                    f"{self.temperature!r}")
        if not 0 < self.top_p <= 1:
            return f"top_p must be in (0, 1] when sampling, got {self.top_p!r}"
        return None

    def new_tokens(self, prompt_len: int) -> int:
        """How many tokens to generate after a prompt of `prompt_len` (see the class)."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        if self.max_length is not None:
            n = self.max_length - prompt_len
            if n < 1:
                raise ValueError(f"max_length {self.max_length} leaves no room for a new token "
                                 f"after a prompt of {prompt_len} tokens; set max_new_tokens")
            return n
        return DEFAULT_NEW_TOKENS

    def replace(self, **changes: Any) -> GenerationConfig:
        """A copy with some fields changed (and validated again)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown generation argument(s) {unknown}; known: {sorted(known)}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_model_config(cls, model_config: Any) -> GenerationConfig:
        """Defaults from a parsed model config alone: its bos and eos ids (config.json's
        pad_token_id and other generation fields come with `from_pretrained`)."""
        return cls(eos_token_ids=tuple(getattr(model_config, "eos_token_ids", ())),
                   bos_token_id=getattr(model_config, "bos_token_id", None))

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike[str],
                        model_config: Any = None) -> GenerationConfig:
        """The checkpoint's generation defaults, read as transformers reads them.

        With ``generation_config.json`` in the directory, that file alone decides (its
        ``eos_token_id``, an int or a list, replaces config.json's; absent there means no
        eos, as in transformers). Without it, the fields of the same names that config.json
        sets, as a transformers model takes them into its generation_config then
        (``GenerationConfig.from_model_config``): pad_token_id (finished rows are filled
        with it, not with eos), bos/eos ids, and any sampling field; one config.json does
        not set is unset, as there. Without either file, ``model_config``'s bos/eos ids.
        Applied fields: eos_token_id,
        bos_token_id, pad_token_id, do_sample, temperature, top_k, top_p, max_new_tokens,
        max_length; null means "not set". A bad value raises ConfigError naming the file
        and the field; so does a path there that is not a regular file (files.py).
        """
        generation_file = Path(model_dir) / GENERATION_CONFIG_FILE
        if files.present(generation_file):
            return cls._from_json(generation_file)
        config_file = Path(model_dir) / MODEL_CONFIG_FILE
        if files.present(config_file):
            return cls._from_json(config_file, model_config=True)
        return cls() if model_config is None else cls.from_model_config(model_config)

    @classmethod
    def _from_json(cls, file: Path, model_config: bool = False) -> GenerationConfig:
        """The generation fields of a JSON object file (`model_config`: config.json)."""

        text = files.read_text(file, ConfigError)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{file}: invalid JSON: {exc}") from exc
        if not isinstance(data, Mapping):
            raise ConfigError(f"{file}: must be a JSON object, got {type(data).__name__}")
        values = {k: data[k] for k in _FILE_FIELDS if data.get(k) is not None}
        pad = values.get("pad_token_id")
        if model_config and isinstance(pad, int) and not isinstance(pad, bool) and pad < 0:
            import warnings

            # Old LLaMA conversions have "pad_token_id": -1 in config.json; transformers
            # loads them with a warning. Refusing the model for a field of its config that
            # only pads finished rows would be out of proportion.
            values.pop("pad_token_id")
            warnings.warn(f"{file}: pad_token_id {pad} is negative; ignored (finished rows "
                          "are filled with the first eos id, where transformers writes "
                          f"{pad})", UserWarning, stacklevel=3)
        kwargs: dict[str, Any] = {}
        try:
            if "eos_token_id" in values:
                eos = values.pop("eos_token_id")
                items = eos if isinstance(eos, list) else [eos]
                kwargs["eos_token_ids"] = tuple(
                    check_int(e, "eos_token_id", minimum=0) for e in items)
            kwargs.update(values)
            config = cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{file}: {exc}") from None
        problem = config.sampling_problem()
        if problem:
            import warnings

            # transformers loads such a file too; generating with it raises.
            warnings.warn(f"{file}: do_sample is true but {problem}: loaded as transformers "
                          "does; sampling with these defaults will raise (pass do_sample="
                          "False or a valid temperature/top_p)", UserWarning, stacklevel=3)
        return config


class NonFiniteLogitsError(FloatingPointError):
    """`generate` met NaN/Inf logits and took no token from them; the message names the
    step, the row and the first such value."""


def _check_logits(logits: np.ndarray, live: np.ndarray, step: int) -> None:
    """Refuse a step whose logits [batch, vocab] hold NaN/Inf in a row still generating
    (a finished row's next token is padding whatever its logits)."""
    finite = np.isfinite(logits)
    if finite.all():  # the common case in one pass (the masked form costs 7x as much)
        return
    bad = ~finite & live[:, None]
    if not bad.any():
        return
    b, v = (int(i) for i in np.argwhere(bad)[0])
    raise NonFiniteLogitsError(
        f"generate: the logits of step {step} (new token {step + 1}), row {b}, hold "
        f"{int(bad[b].sum())} non-finite value(s) out of {logits.shape[1]} (first: "
        f"{float(logits[b, v])} at token id {v}); no token is taken from them. The weights "
        "(see allow_nonfinite) or an op produce NaN/Inf: forward(capture=...) shows where")


@dataclass
class GenerationOutput:
    tokens: np.ndarray  # [batch, new] generated ids (eos included; padded after a stop)
    logits: list[np.ndarray] = field(default_factory=list)  # per step [batch, vocab]
    prompt_length: int = 0


def generate(model: Any, input_ids: Sequence[Sequence[int]] | np.ndarray,
             config: GenerationConfig | None = None, *, return_logits: bool = False,
             graph: bool | str = "auto", **kwargs: Any) -> GenerationOutput:
    """Prefill the prompt, then decode one token per step.

    ``config`` defaults to the model's ``generation_config`` (from the checkpoint, see
    `GenerationConfig.from_pretrained`), else `GenerationConfig()`; keyword arguments
    (``max_new_tokens=...``, ``eos_token_ids=()``, ...) override fields of either.
    Prompts of unequal length are left-padded (with the pad id, else the first eos id,
    else 0) under an attention mask, as transformers' batched generation does: padding is
    never attended to and each row's positions count its own tokens only. ``graph``:
    decode steps as a captured device graph where the backend has graphs ("auto"), always
    (True: an error where it has none) or never (False: the plain eager step).
    """
    if config is None:
        config = getattr(model, "generation_config", None) or GenerationConfig()
    elif not isinstance(config, GenerationConfig):
        raise TypeError(f"config must be a GenerationConfig, got {type(config).__name__}")
    cfg = config.replace(**kwargs) if kwargs else config
    return_logits = check_bool(return_logits, "return_logits")
    vocab = model.config.vocab_size
    rows = ragged_token_ids(input_ids, "input_ids", vocab_size=vocab)
    batch, prompt_len = len(rows), max(len(r) for r in rows)
    problem = cfg.sampling_problem()
    if problem:
        raise ValueError(problem)
    new = cfg.new_tokens(prompt_len)
    if new != cfg.max_new_tokens:
        cfg = cfg.replace(max_new_tokens=new)
    if prompt_len + cfg.max_new_tokens > model.max_cache_len:
        raise ValueError(f"prompt ({prompt_len}) + max_new_tokens ({cfg.max_new_tokens}) "
                         f"exceeds the model's max_cache_len ({model.max_cache_len})")
    cache = model.new_cache(batch, prompt_len + cfg.max_new_tokens)
    rng = np.random.default_rng(cfg.seed)
    # One id slot per row, read back with a single copy per step (one host sync).
    results = Tensor.zeros((batch,), "i32", model.device)
    slots = [results.select(0, b) for b in range(batch)]
    # topk <= 1 makes InfiniCore's random_sample an argmax; 0 means "no top-k limit".
    topk = 1 if not cfg.do_sample else (min(cfg.top_k, vocab) or vocab)
    topp = cfg.top_p if cfg.do_sample else 0.0
    temperature = cfg.temperature if cfg.do_sample else 1.0

    out = np.zeros((batch, cfg.max_new_tokens), dtype=np.int64)
    done = np.zeros(batch, dtype=bool)
    # An eos id outside the vocabulary can never be produced.
    eos = np.array([e for e in cfg.eos_token_ids if e < vocab] or [-1], dtype=np.int64)
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else int(eos[0])
    ids = np.full((batch, prompt_len), pad if 0 <= pad < vocab else 0, dtype=np.int64)
    mask = np.zeros((batch, prompt_len), dtype=np.int64)
    for b, row in enumerate(rows):
        ids[b, prompt_len - len(row):] = row
        mask[b, prompt_len - len(row):] = 1
    step_logits: list[np.ndarray] = []
    logits = model.forward(ids, cache=cache, attention_mask=None if mask.all() else mask)
    decoder = None
    if graph is not False and hasattr(model, "fixed_decoder"):
        from .runtime.graph import graph_backend

        if graph is True or graph_backend(model.device) is not None:
            decoder = model.fixed_decoder(cache, graph=graph)
    if decoder is None:
        model.prepare_decode(cache, cfg.max_new_tokens - 1)
    try:
        for step in range(cfg.max_new_tokens):
            # One host copy of the step's logits (batch x vocab), checked before any token
            # is taken from them.
            host = logits.numpy().reshape(batch, vocab)
            _check_logits(host, ~done, step)
            if return_logits:
                step_logits.append(host)
            for b in range(batch):
                row = logits.select(0, b).select(0, 0)  # [vocab]
                r = float(rng.random()) if cfg.do_sample else 0.0
                ops.random_sample(slots[b], row, r, topp, topk, temperature)
            out[:, step] = np.where(done, pad, results.numpy())
            done |= np.isin(out[:, step], eos)
            if done.all() or step + 1 == cfg.max_new_tokens:
                out = out[:, : step + 1]
                break
            if decoder is not None:
                logits = decoder.step(out[:, step])
            else:
                logits = model.forward(out[:, step:step + 1], cache=cache)
    finally:
        if decoder is not None:
            decoder.close()
    return GenerationOutput(tokens=out, logits=step_logits, prompt_length=prompt_len)
