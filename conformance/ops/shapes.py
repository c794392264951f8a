"""Shapes the LLaMA model feeds each op: SmolLM2-135M's (the real checkpoint of the suite),
a tiny GQA model's, odd sizes, and sizes that cross common kernel tile/block boundaries."""

HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 576, 1536, 9, 3, 64, 49152
GROUP = HEADS // KV_HEADS
PREFILL = 37  # odd, so no kernel gets a friendly multiple
DECODE_POS = 64  # a decode step attends to 65 positions
CACHE_LEN = 128
# Decode over a long cache, in every default run whatever a sweep draws: several hundred
# keys (past 256, a common block size) and a few thousand (past 2048, the default cache).
LONG_KEYS = (300, 2100)
