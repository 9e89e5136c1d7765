"""Random `BertForSequenceClassification` models saved like a hub checkpoint.

No model hub is reachable where tests and benchmarks run, so they use random
weights: scores are meaningless but exercise exactly the code users run, and
cost depends only on the shape. `python -m tests.model_factory DIR` writes a
tiny model for offline smoke runs of the sample corpus.
"""
from __future__ import annotations

import argparse
import os
from typing import Iterable

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# initializer_range 0.3: with the default 0.02 a tiny model scores every pair 0.4994 +- 1e-5, which
# would let a test comparing scores at 1e-5 pass with pairs mixed up; 0.3 spreads them over 0.2-0.9.
TINY_SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  initializer_range=0.3)
ERLANGSHEN_SHAPE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
ERLANGSHEN_VOCAB = 21128


def _character_vocab(texts: Iterable[str]) -> list[str]:
    chars = {ch for text in texts for ch in text if not ch.isspace()}
    chars |= set("abcdefghijklmnopqrstuvwxyz0123456789")
    return SPECIAL_TOKENS + sorted(chars)


def make_random_model(directory: str, texts: Iterable[str] = (), shape: dict = TINY_SHAPE,
                      vocab_size: int | None = None, seed: int = 0) -> str:
    """Saves tokenizer + random 2-label classifier to `directory` and returns it."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    os.makedirs(directory, exist_ok=True)
    vocab = _character_vocab(texts)
    if vocab_size is not None:  # pad with unused tokens to the real model's embedding size
        vocab += [f"[unused{i}]" for i in range(vocab_size - len(vocab))]
    vocab_file = os.path.join(directory, "vocab.txt")
    with open(vocab_file, "w", encoding="utf-8") as handle:
        handle.write("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(vocab_file)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), num_labels=2, max_position_embeddings=512, **shape)
    BertForSequenceClassification(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory")
    parser.add_argument("--texts-from", help="a Parquet file whose 'question' column gives the vocabulary")
    parser.add_argument("--erlangshen-shape", action="store_true", help="full 110M shape instead of tiny")
    args = parser.parse_args()
    texts: list[str] = []
    if args.texts_from:
        import pyarrow.parquet as pq
        texts = [t for t in pq.read_table(args.texts_from).column("question").to_pylist() if isinstance(t, str)]
    if args.erlangshen_shape:
        make_random_model(args.directory, texts, ERLANGSHEN_SHAPE, ERLANGSHEN_VOCAB)
    else:
        make_random_model(args.directory, texts)
    print(args.directory)


if __name__ == "__main__":
    main()
