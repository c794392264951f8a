"""Command line: `python -m infinilm_models generate --model PATH --prompt "..."`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _tokenizer(model_dir: Path):
    """The checkpoint's own tokenizer.json through `tokenizers` (no torch needed)."""
    from tokenizers import Tokenizer

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found: the CLI needs the checkpoint's tokenizer.json")
    return Tokenizer.from_file(str(path))


def cmd_generate(args: argparse.Namespace) -> int:
    from .generation import GenerationConfig, generate
    from .models import AutoLlamaModel

    model_dir = Path(args.model)
    tok = _tokenizer(model_dir)
    t0 = time.perf_counter()
    model = AutoLlamaModel.from_pretrained(model_dir, args.device, args.dtype,
                                           max_cache_len=args.max_cache_len,
                                           progress=not args.quiet)
    load_s = time.perf_counter() - t0
    ids = tok.encode(args.prompt).ids
    if not ids:
        raise SystemExit("error: the prompt encodes to no tokens")
    eos = model.config.eos_token_ids if not args.ignore_eos else ()
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                           temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                           seed=args.seed, eos_token_ids=tuple(eos))
    t1 = time.perf_counter()
    out = generate(model, [ids], cfg)
    gen_s = time.perf_counter() - t1
    new = out.tokens[0].tolist()
    print(args.prompt + tok.decode(new, skip_special_tokens=True))
    if not args.quiet:
        print(f"[{model.device} {model.dtype.short}] load {load_s:.2f} s, {len(ids)} prompt "
              f"tokens, {len(new)} new tokens in {gen_s:.2f} s "
              f"({len(new) / gen_s:.2f} tokens/s including prefill)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infinilm_models",
                                     description="LLaMA on InfiniCore")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate text from a prompt",
                       description="Load a HF LLaMA checkpoint directory onto an InfiniCore "
                                   "device and continue a prompt.")
    g.add_argument("--model", required=True, help="HF LLaMA checkpoint directory")
    g.add_argument("--prompt", required=True)
    g.add_argument("--device", default="cpu", help="cpu, nvidia, nvidia:1, ... (default cpu)")
    g.add_argument("--dtype", default=None,
                   help="f32, f16 or bf16 (default: the checkpoint's dtype, else f32)")
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=50, help="0 = no top-k limit")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-sequence")
    g.add_argument("--max-cache-len", type=int, default=None)
    g.add_argument("-q", "--quiet", action="store_true", help="print only the text")
    g.set_defaults(func=cmd_generate)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
