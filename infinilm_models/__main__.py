"""Command line: `python -m infinilm_models generate --model PATH --prompt "..."`.

Every user error (a bad argument, config.json, generation_config.json, tokenizer or
checkpoint, any of them a path that is not a regular file; an unavailable device or
InfiniCore build) ends as one line ``error: <message>`` on stderr and exit status 2, and so
do non-finite logits (nothing is printed on stdout then); argparse's own errors (an empty
--model, a non-integer --tp) are one line too (``... generate: error: argument --tp: ...``).
The ranges (--tp >= 1, --max-cache-len >= 1, the sampling numbers) are checked where the
values enter the library, before any weight is read. Anything else is a bug and keeps its
traceback (exit status 1).

The directory is read cheapest first, so the first problem reported is the one a user
would fix first: config.json, generation_config.json, the tokenizer (only with --prompt or
text output), then the weights.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from .arguments import OneLineParser, nonempty

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


def _one_line(message: str) -> str:
    """Multi-line messages (a checkpoint mismatch lists tensors) joined with "; ", or a
    space after a line that ends with a colon."""
    out = ""
    for part in (p.strip() for p in str(message).splitlines()):
        if part:
            out += ("" if not out else " " if out.endswith(":") else "; ") + part
    return out


def _tokenizer(model_dir: Path, why: str) -> Any:
    """The checkpoint's own tokenizer.json through `tokenizers` (no torch needed)."""
    from .files import present
    from .tokenizer import TOKENIZER_FILE, TokenizerError, load_tokenizer

    path = model_dir / TOKENIZER_FILE
    if not present(path):
        raise UsageError(f"{path} not found: {why} needs the checkpoint's tokenizer.json "
                         "(give --token-ids and --output ids for a directory without one)")
    try:  # a pipe, a device, a looping link, unparsable content: one line naming it
        return load_tokenizer(path)
    except TokenizerError as exc:
        raise UsageError(str(exc)) from None


def _show_warning(message: Warning | str, category: type[Warning], *_: Any,
                  **__: Any) -> None:
    """A warning as one line ``warning: <message>`` (Python's own format adds the source
    line of the warning call, which says nothing to a user)."""
    print(f"warning: {_one_line(str(message))}", file=sys.stderr)


def _token_id_list(text: str) -> list[int]:
    """argparse type for --token-ids: "1,2,3" (spaces allowed too)."""
    parts = [p for p in text.replace(",", " ").split() if p]
    if not parts:
        raise argparse.ArgumentTypeError("no token ids given (expected e.g. 1,2,3)")
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integer token ids") from None
    negative = [i for i in ids if i < 0]
    if negative:
        raise argparse.ArgumentTypeError(f"token id {negative[0]} is negative")
    return ids


def _generation_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling arguments the user gave; the rest come from generation_config.json."""
    out: dict[str, Any] = {}
    if args.sample:
        out["do_sample"] = True
    if args.greedy:
        out["do_sample"] = False
    for name in ("max_new_tokens", "temperature", "top_k", "top_p", "seed"):
        value = getattr(args, name)
        if value is not None:
            out[name] = value
    if args.ignore_eos:
        out["eos_token_ids"] = ()
    return out


def cmd_generate(args: argparse.Namespace) -> int:
    from .files import present
    from .generation import GenerationConfig, generate
    from .models.auto import AutoLlamaModel, model_class
    from .models.llama.modeling_llama import cache_limit
    from .runtime import Device, library
    from .runtime.device import backend_of

    model_dir = Path(args.model)
    # --device nvidia finds the nvidia build without INFINILM_BACKEND (INFINI_ROOT wins);
    # then the device is named as that build names it (hygon is sugon on 0.1.0).
    if backend_of(args.device) is not None:
        library.set_default_backend(backend_of(args.device))
    device = Device.parse(args.device)
    # an unknown model_type is refused before anything else
    config = model_class(model_dir).config_class.from_pretrained(model_dir)
    base = GenerationConfig.from_pretrained(model_dir, config)
    try:
        gen = base.replace(**_generation_overrides(args))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"bad generation argument: {exc}") from exc

    output = args.output
    if output == "auto":
        # A tokenizer.json that is there but unusable (a pipe, a broken link) is an error
        # naming it, not a reason to print ids instead.
        output = "text" if args.prompt is not None or present(model_dir / "tokenizer.json") \
            else "ids"
    tok = None
    if args.prompt is not None or output == "text":
        tok = _tokenizer(model_dir, "--prompt" if args.prompt is not None else "--output text")
    if args.prompt is not None:
        ids = tok.encode(args.prompt).ids
        if not ids:
            raise UsageError("the prompt encodes to no tokens")
    else:
        ids = args.token_ids
    # What generate() would refuse, refused before the (slow) weights are read.
    beyond = [i for i in ids if i >= config.vocab_size]
    if beyond:
        raise UsageError(f"token id {beyond[0]} is out of range for this model's vocabulary "
                         f"[0, {config.vocab_size})")
    cache_len = cache_limit(config, args.max_cache_len)
    problem = gen.sampling_problem()
    if problem:
        raise UsageError(f"bad generation argument: {problem}")
    try:
        new = gen.new_tokens(len(ids))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    gen = gen.replace(max_new_tokens=new)
    if len(ids) + gen.max_new_tokens > cache_len:
        raise UsageError(f"prompt ({len(ids)} tokens) + max_new_tokens ({gen.max_new_tokens}) "
                         f"exceeds the cache length ({cache_len}); raise --max-cache-len")

    t0 = time.perf_counter()
    # tp x pp > 1: a parallel model. A layout the model cannot be split into is refused
    # (ValueError, naming the numbers) before any weight is read.
    model = AutoLlamaModel.from_pretrained(model_dir, device, args.dtype, tp=args.tp,
                                           pp=args.pp, max_cache_len=args.max_cache_len,
                                           progress=not args.quiet,
                                           allow_nonfinite=args.allow_nonfinite)
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = generate(model, [ids], gen)
    gen_s = time.perf_counter() - t1
    new = out.tokens[0].tolist()
    if output == "ids":
        print(",".join(str(i) for i in new))
    elif args.prompt is not None:
        print(args.prompt + tok.decode(new, skip_special_tokens=True))
    else:
        print(tok.decode(ids + new, skip_special_tokens=True))
    if not args.quiet:
        print(f"[{model.device} {model.dtype.short}] load {load_s:.2f} s, {len(ids)} prompt "
              f"tokens, {len(new)} new tokens in {gen_s:.2f} s "
              f"({len(new) / gen_s:.2f} tokens/s including prefill)", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m infinilm_models", description="LLaMA on InfiniCore")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser(
        "generate", help="continue a prompt (text or token ids)",
        description="Load a HF LLaMA checkpoint directory onto an InfiniCore device and "
                    "continue a prompt. Sampling defaults come from the checkpoint's "
                    "generation_config.json (as in transformers); the options override them.")
    g.add_argument("--model", required=True, type=nonempty, help="HF LLaMA checkpoint directory")
    prompt = g.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="text, encoded with the checkpoint's tokenizer.json")
    prompt.add_argument("--token-ids", type=_token_id_list, metavar="1,2,3",
                        help="the prompt as token ids (no tokenizer needed)")
    g.add_argument("--output", choices=("auto", "text", "ids"), default="auto",
                   help="print the continuation as text (needs tokenizer.json) or as the "
                        "generated ids, comma-separated; auto: text when a tokenizer is "
                        "there, else ids (default auto)")
    g.add_argument("--device", default="cpu", type=nonempty,
                   help="cpu, nvidia, nvidia:1, ... (default cpu)")
    g.add_argument("--dtype", default=None, type=nonempty,
                   help="f32, f16 or bf16 (default: the checkpoint's dtype, else f32)")
    g.add_argument("--max-new-tokens", type=int, default=None,
                   help="default: generation_config.json's, else 20")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    mode.add_argument("--greedy", action="store_true",
                      help="greedy decoding even where generation_config.json samples")
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None, help="0 = no top-k limit")
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-sequence")
    g.add_argument("--max-cache-len", type=int, default=None)
    g.add_argument("--allow-nonfinite", action="store_true",
                   help="load a checkpoint whose weights hold NaN/Inf anyway (with a warning), "
                        "for diagnosis; its logits will be NaN or garbage")
    g.add_argument("--tp", type=int, default=1,
                   help="tensor-parallel ranks (heads and MLP features split across devices; "
                        "on cpu the ranks share it); default 1")
    g.add_argument("--pp", type=int, default=1,
                   help="pipeline stages (layers split across devices); default 1. tp x pp "
                        "devices are used: --device nvidia takes nvidia:0..tp*pp-1")
    g.add_argument("-q", "--quiet", action="store_true", help="print only the result")
    g.set_defaults(func=cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .generation import NonFiniteLogitsError
    from .models.llama import CheckpointError, ConfigError
    from .runtime import LibraryNotFound

    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():  # restores showwarning for an in-process caller
            warnings.showwarning = _show_warning
            return args.func(args)
    except (UsageError, ConfigError, CheckpointError, LibraryNotFound, ValueError,
            NonFiniteLogitsError) as exc:
        # NonFiniteLogitsError: the model computes NaN/Inf (weights loaded with
        # --allow-nonfinite, or an op); no token is printed.
        # ValueError: our argument checks (token id out of range, dtype, device, cache
        # length...) raise it with the argument named; a bug raising one is the price.
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
