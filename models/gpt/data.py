"""GPT's host side (numpy): documents packed into causal-LM rows, and the batch of a row table.

Training rows come from packing documents end to end: each row of `seq_len + 1` tokens carries a
segment id per token, so attention and the loss never cross a document boundary.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from zoo.data import DataError, record_text


def make_examples(records: list[dict[str, str]], run: Any, tokenizer: Any) -> dict[str, np.ndarray]:
    """Training rows of a split: every record's text tokenized and packed."""
    texts = [record_text(r) for r in records]
    return pack_documents(tokenizer.encode_batch(texts), run.data.seq_len, tokenizer.eos_id)


def pack_documents(docs: list[list[int]], seq_len: int, eos_id: int) -> dict[str, np.ndarray]:
    """Pack tokenized documents (each followed by EOS) into rows of seq_len + 1 tokens with segment ids."""
    lengths = np.array([len(d) + 1 for d in docs], dtype=np.int64)
    tokens = np.fromiter((t for d in docs for t in (*d, eos_id)), dtype=np.int32, count=int(lengths.sum()))
    doc_ids = np.repeat(np.arange(1, len(docs) + 1, dtype=np.int32), lengths)
    width = seq_len + 1
    rows = tokens.size // width
    if rows == 0:
        raise DataError(f"the data holds {tokens.size} tokens, fewer than one row of {width}")
    return {"tokens": tokens[: rows * width].reshape(rows, width),
            "segments": doc_ids[: rows * width].reshape(rows, width)}


def positions_in_segment(segments_BL: np.ndarray) -> np.ndarray:
    """Position of each token within its segment, restarting at 0 where the segment id changes."""
    B, L = segments_BL.shape
    index = np.broadcast_to(np.arange(L), (B, L))
    starts = np.concatenate([np.ones((B, 1), bool), segments_BL[:, 1:] != segments_BL[:, :-1]], axis=1)
    return (index - np.maximum.accumulate(np.where(starts, index, 0), axis=1)).astype(np.int32)


def prepare_batch_fn(run: Any, tokenizer: Any) -> Any:
    """The host-side batch function for a run (GPT's needs no settings)."""
    del run, tokenizer
    return prepare_batch


def prepare_batch(rows: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Causal-LM batch: inputs, next-token targets, segments, positions and loss weights."""
    del rng  # the causal objective needs no randomness
    tokens, segments = rows["tokens"], rows["segments"]
    inputs, seg_in = tokens[:, :-1], segments[:, :-1]
    weights = (segments[:, 1:] == seg_in) & (seg_in > 0)  # never predict across a document boundary
    return {"inputs": inputs, "targets": tokens[:, 1:], "segments": seg_in,
            "positions": positions_in_segment(seg_in), "weights": weights.astype(np.float32)}



def sample_prompts(run: Any, records: list[dict[str, str]], tokenizer: Any, count: int) -> list[str]:
    """The first few tokens of `count` documents, as prompts for closing samples."""
    del run
    texts = [r.get("text", r.get("input", "")) for r in records[:count]]
    return [tokenizer.decode(ids[:8]) for ids in tokenizer.encode_batch(texts) if ids]
