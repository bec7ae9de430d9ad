"""GPT's host side (numpy): documents packed into causal-LM rows, and a row's inputs.

Rows come from packing a slot's documents end to end (`zoo.data`): each row of `seq_len + 1` tokens
carries a segment id per token, so attention and the loss never cross a document boundary.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from zoo.rows import Cursor, Doc, Row, RowMaker, take_tokens
from zoo.sources import Record, record_text


def row_maker(run: Any, tokenizer: Any) -> RowMaker:
    """Documents (each followed by EOS) packed end to end into rows of seq_len + 1 tokens with segment ids."""
    width, eos = run.data.seq_len + 1, tokenizer.eos_id

    def units(record: Record, doc: Doc) -> list[np.ndarray]:
        ids = tokenizer.encode(record_text(record))
        return [np.asarray([*ids, eos], np.int32)] if ids else []

    def make_row(cursor: Cursor) -> Row | None:
        pieces = take_tokens(cursor, width)
        return pack_pieces(pieces, width) if pieces else None

    return RowMaker(units, make_row, finish, lambda: pack_pieces([], width))


def pack_pieces(pieces: list[np.ndarray], width: int) -> Row:
    """One row of `width` tokens from pieces of documents, segment k + 1 for the k-th; zero padding after."""
    tokens, segments = np.zeros(width, np.int32), np.zeros(width, np.int32)
    at = 0
    for k, piece in enumerate(pieces, 1):
        tokens[at:at + len(piece)], segments[at:at + len(piece)] = piece, k
        at += len(piece)
    return {"tokens": tokens, "segments": segments}


def positions_in_segment(segments_BL: np.ndarray) -> np.ndarray:
    """Position of each token within its segment, restarting at 0 where the segment id changes."""
    B, L = segments_BL.shape
    index = np.broadcast_to(np.arange(L), (B, L))
    starts = np.concatenate([np.ones((B, 1), bool), segments_BL[:, 1:] != segments_BL[:, :-1]], axis=1)
    return (index - np.maximum.accumulate(np.where(starts, index, 0), axis=1)).astype(np.int32)


def finish(row: Row, rng: np.random.Generator) -> Row:
    """One packed row as causal-LM inputs (see `prepare_batch`)."""
    del rng  # the causal objective needs no randomness
    return {k: v[0] for k, v in prepare_batch({k: v[None] for k, v in row.items()}).items()}


def prepare_batch(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Causal-LM batch: inputs, next-token targets, segments, positions and loss weights."""
    tokens, segments = rows["tokens"], rows["segments"]
    inputs, seg_in = tokens[:, :-1], segments[:, :-1]
    weights = (segments[:, 1:] == seg_in) & (seg_in > 0)  # never predict across a document boundary
    return {"inputs": inputs, "targets": tokens[:, 1:], "segments": seg_in,
            "positions": positions_in_segment(seg_in), "weights": weights.astype(np.float32)}



def sample_prompts(run: Any, records: list[Record], tokenizer: Any, count: int) -> list[str]:
    """The first few tokens of `count` documents, as prompts for closing samples."""
    del run
    texts = [r.get("text", r.get("input", "")) for r in records[:count]]
    return [tokenizer.decode(ids[:8]) for ids in tokenizer.encode_batch(texts) if ids]
