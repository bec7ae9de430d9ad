"""Random-token batches in a family's own row layout, made by its own `row_maker` through `zoo.data`.

Documents are space-separated ids read by `IdTokenizer`, so the benchmark needs no trained
tokenizer and every family gets rows (packing, masking, span corruption) exactly as training does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from zoo import data, experiment, sources

FIRST_ID = 3  # random tokens avoid pad/eos/unk (0, 1, 2)


class IdTokenizer:
    """Text of space-separated ids <-> ids, with zoo's ids (pad 0, eos 1, unk 2, reserved ids on top)."""

    pad_id, eos_id, unk_id, bos_id = 0, 1, 2, None

    def __init__(self, vocab_size: int, num_sentinels: int = 0):
        self.vocab_size, self.num_sentinels = vocab_size, num_sentinels

    def encode(self, text: str) -> list[int]:
        """Ids written in `text`."""
        return [int(t) for t in text.split()]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` of each text."""
        return [self.encode(t) for t in texts]

    def decode(self, ids: Any) -> str:
        """Ids as text."""
        return " ".join(str(int(i)) for i in ids)

    def sentinel_id(self, k: int) -> int:
        """Id of `<extra_id_k>` (the highest id is k = 0, as in T5)."""
        return self.vocab_size - 1 - k

    def id_to_piece(self, i: int) -> str:
        """The piece of an id (its decimal text)."""
        return str(i)


def id_tokenizer(exp: experiment.Experiment) -> IdTokenizer:
    """An `IdTokenizer` of the experiment's vocabulary and the family's reserved ids."""
    model_cfg = exp.config.model
    return IdTokenizer(model_cfg.vocab_size, exp.family.reserved_ids(model_cfg))


def random_text(rng: np.random.Generator, tokenizer: IdTokenizer, length: int) -> str:
    """One document of `length` random ordinary ids (no special ids, no reserved ids)."""
    high = tokenizer.vocab_size - tokenizer.num_sentinels
    return " ".join(map(str, rng.integers(FIRST_ID, high, size=length)))


def split(exp: experiment.Experiment, docs: int = 64) -> data.Split:
    """The training split of `docs` random-token documents, in the family's own row layout."""
    cfg = exp.config
    tok = id_tokenizer(exp)
    rng = np.random.default_rng(cfg.train.seed)
    records = sources.RecordList([{"text": random_text(rng, tok, 2 * cfg.data.seq_len)} for _ in range(docs)])
    return dataclasses.replace(exp, tokenizer=tok).split("train", records)


def first_batch(exp: experiment.Experiment) -> dict[str, np.ndarray]:
    """This process's rows of the first random-token batch."""
    batches = split(exp).batches()
    try:
        return next(batches).inputs
    finally:
        batches.close()
