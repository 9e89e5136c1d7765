"""Random `BertForSequenceClassification` models saved like a hub checkpoint (and random static embedders).

No model hub is reachable where the tests and benchmarks run, so they use
random weights: scores are meaningless, but they exercise exactly the code
users run, and cost depends only on the shape. The vocabulary is built here,
from Unicode blocks (every CJK ideograph, kana, ASCII, full-width and CJK
punctuation, ...), so no test depends on a data file for it and Chinese text
never turns into `[UNK]`.

    python -m pipelines.random_model DIR                    # tiny: for tests and smoke runs
    python -m pipelines.random_model DIR --erlangshen-shape # 110M parameters: for speed figures
    python -m pipelines.random_model DIR --erlangshen-shape --spread  # scores over (0, 1): fidelity
"""
from __future__ import annotations

import argparse
import os

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# initializer_range 0.3: with the default 0.02 a tiny model scores every pair 0.4994 +- 1e-5, which
# would let a test comparing scores at 1e-5 pass with pairs mixed up; 0.3 (with TINY_SEED) spreads the
# first 30 LCQMC pairs over 0.32-0.94 (standard deviation 0.18; some seeds give far less) and joins the
# sample corpus into components chaining control re-splits (3 of them), which the tests rely on.
TINY_SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  initializer_range=0.3)
ERLANGSHEN_SHAPE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
ERLANGSHEN_VOCAB = 21128
TINY_SEED = 5

# Characters a BERT tokenizer keeps as words (each also gets its "##" continuation piece).
_WORD_BLOCKS = [
    (0x0021, 0x007E),  # ASCII
    (0x00A1, 0x00FF),  # Latin-1
    (0x2010, 0x205E),  # general punctuation: “” ‘’ … —
    (0x2150, 0x21FF),  # number forms, arrows
    (0x2200, 0x22FF),  # mathematical operators: ⊙
    (0x2460, 0x24FF),  # enclosed alphanumerics
    (0x25A0, 0x25FF),  # geometric shapes
    (0x2600, 0x27BF),  # symbols, dingbats
    (0x3000, 0x303F),  # CJK symbols and punctuation: 。、《》【】
    (0x3040, 0x30FF),  # hiragana, katakana
    (0xFF01, 0xFF5E),  # full-width forms
]
# Characters a BERT tokenizer splits one by one (its `_is_chinese_char`): the common block first.
_IDEOGRAPH_BLOCKS = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF)]


def _characters(blocks: list[tuple[int, int]]) -> list[str]:
    return [chr(c) for start, end in blocks for c in range(start, end + 1)]


def vocabulary() -> list[str]:
    """Every token a random test model knows, most needed first.

    Special tokens, the CJK Unified Ideographs block, ASCII and the "##" pieces of ASCII letters and
    digits (so Latin words are word pieces, not `[UNK]`) come first: a model of Erlangshen's shape
    keeps the first 21,128 entries, its real vocabulary's size, and these. Then the other word
    characters (punctuation, symbols, kana, full-width forms) and their "##" pieces, and the rarer
    ideograph blocks. (So the Erlangshen-shaped model reads full-width punctuation as `[UNK]`: one
    token either way, which is all its speed figures depend on.)
    """
    ideographs = _characters(_IDEOGRAPH_BLOCKS)
    common = ideographs[:0x9FFF - 0x4E00 + 1]
    ascii_ = _characters(_WORD_BLOCKS[:1])
    alphanumeric = [c for c in ascii_ if c.isalnum() and not c.isupper()]
    others = _characters(_WORD_BLOCKS[1:])
    ordered = (SPECIAL_TOKENS + common + ascii_ + ["##" + c for c in alphanumeric] + others
               + ["##" + c for c in ascii_ + others if c not in alphanumeric] + ideographs[len(common):])
    return list(dict.fromkeys(ordered))


def make_random_model(directory: str, shape: dict = TINY_SHAPE, vocab_size: int | None = None,
                      seed: int = TINY_SEED) -> str:
    """Saves a tokenizer and a random 2-label classifier to `directory`.

    Args:
        directory: where to write (created if missing).
        shape: `BertConfig` sizes; `TINY_SHAPE` or `ERLANGSHEN_SHAPE`.
        vocab_size: cut the vocabulary to this many tokens (None: all of `vocabulary()`).
        seed: torch seed of the random weights.

    Returns:
        `directory`.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    os.makedirs(directory, exist_ok=True)
    vocab = vocabulary()[:vocab_size]
    vocab_file = os.path.join(directory, "vocab.txt")
    with open(vocab_file, "w", encoding="utf-8") as handle:
        handle.write("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(vocab_file)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), num_labels=2, max_position_embeddings=512, **shape)
    BertForSequenceClassification(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# With BERT's default initializer_range (0.02) a full-shape random model scores every pair 0.55-0.60, so
# two precisions would agree whatever their error; 0.1 spreads the first 64 LCQMC dev pairs over 0.14-0.995
# (standard deviation 0.20, seed 5), so that fidelity figures (fp32 against bf16, fp16, int8) mean something.
SPREAD_INITIALIZER_RANGE = 0.1


def make_erlangshen_shaped_model(directory: str, seed: int = TINY_SEED, spread: bool = False) -> str:
    """A random model of Erlangshen-Roberta-110M-Similarity's shape and vocabulary size, for speed figures
    (`spread`: weights drawn wider, so that its scores spread over (0, 1), for fidelity figures)."""
    shape = {**ERLANGSHEN_SHAPE, "initializer_range": SPREAD_INITIALIZER_RANGE} if spread else ERLANGSHEN_SHAPE
    return make_random_model(directory, shape, ERLANGSHEN_VOCAB, seed)


def make_random_static_embedder(directory: str, buckets: int = 4096, dims: int = 32, seed: int = 0) -> str:
    """A static embedder (`--embedders static:DIR`) with a random table: texts sharing n-grams get similar
    vectors, nothing more; for tests."""
    import numpy as np

    from transforms.sources import save_static_embedder
    table = np.random.default_rng(seed).standard_normal((buckets, dims)).astype(np.float32)
    return save_static_embedder(directory, table, {"trained": f"random table, seed {seed}: for tests"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory")
    parser.add_argument("--erlangshen-shape", action="store_true", help="full 110M shape instead of tiny")
    parser.add_argument("--spread", action="store_true", help="with --erlangshen-shape: scores spread over (0, 1)")
    args = parser.parse_args()
    if args.erlangshen_shape:
        make_erlangshen_shaped_model(args.directory, spread=args.spread)
    else:
        make_random_model(args.directory)
    print(args.directory)


if __name__ == "__main__":
    main()
