"""Word-level tokenizer for the world's captions (a closed vocabulary, stored in bundles)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["WordTokenizer"]

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


class WordTokenizer:
    """Maps caption words to ids: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3, then words.

    Parameters
    ----------
    words
        The vocabulary (order is kept, duplicates removed).
    """

    PAD, BOS, EOS, UNK = 0, 1, 2, 3

    def __init__(self, words: Iterable[str]) -> None:
        seen = dict.fromkeys(w for w in words if w not in SPECIALS)
        self.words = list(SPECIALS) + list(seen)
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str, max_words: int) -> list[int]:
        """``[BOS, w1 … wn, EOS]`` padded with PAD to ``max_words + 2`` (long captions cut)."""
        ids = [self.index.get(w, self.UNK) for w in text.split()][:max_words]
        seq = [self.BOS, *ids, self.EOS]
        return seq + [self.PAD] * (max_words + 2 - len(seq))

    def encode_batch(self, texts: Sequence[str], max_words: int) -> np.ndarray:
        """(N, max_words + 2) int64 ids."""
        return np.array([self.encode(t, max_words) for t in texts], dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first EOS (specials dropped)."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.EOS:
                break
            if i >= len(SPECIALS) and i < len(self.words):
                out.append(self.words[i])
        return " ".join(out)

    def to_list(self) -> list[str]:
        """The vocabulary, for a manifest."""
        return list(self.words)

    @classmethod
    def from_list(cls, words: Sequence[str]) -> WordTokenizer:
        """Inverse of :meth:`to_list`."""
        return cls(words[len(SPECIALS) :] if list(words[: len(SPECIALS)]) == list(SPECIALS) else words)
