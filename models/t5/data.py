"""T5's host-side data (numpy): span corruption, prefix LM and text-to-text pairs.

Every objective is a `zoo.RowMaker` (`row_maker`): pretraining cuts a slot's documents,
concatenated, into chunks that `finish` corrupts with noise from the generator `zoo.data` seeds per
global example (seed, step, slot); seq2seq packs whole (input, target) pairs side by side.
Batches always hold the same six arrays:

    encoder_inputs / encoder_segments  [B, seq_len]      segment 0 = padding, 1, 2, ... = packed examples
    decoder_targets / decoder_segments [B, decoder_len]  each target ends in EOS
    decoder_inputs                     [B, decoder_len]  targets shifted right per segment, start id 0 (pad)
    decoder_weights                    [B, decoder_len]  1.0 on real target tokens

The default offline text-to-text task ("summary line") is built from the embedded corpus: the body
of a stdlib docstring or a pydoc help topic is the input, its first paragraph (the docstring's
summary line, or the topic's title) the target.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from zoo.config import ConfigError
from zoo.errors import DataError
from zoo.rows import Cursor, Doc, Row, RowMaker, stack, take_tokens
from zoo.sources import Record, record_text

SUMMARY_PREFIX = "summarize: "
MAX_SUMMARY_INPUT_CHARS = 2000  # ~500 tokens: more than any encoder length we train with
_RULE_LINE = re.compile(r"^\s*[*=\-~^#]{3,}\s*$")


# ---- lengths ------------------------------------------------------------------------------------


def span_corruption_lengths(raw_len: int, noise_density: float, mean_span: float) -> tuple[int, int, int, int]:
    """(encoder length, decoder length, noise tokens, noise spans) of corrupting `raw_len` tokens.

    The encoder gets the kept tokens, one sentinel per noise span and EOS; the decoder one sentinel
    per span, the noise tokens and EOS (T5's `random_spans_helper` arithmetic).
    """
    noise = min(max(int(round(raw_len * noise_density)), 1), raw_len - 1)
    spans = max(int(round(noise / mean_span)), 1)
    return raw_len - noise + spans + 1, noise + spans + 1, noise, spans


def span_corruption_raw_len(seq_len: int, noise_density: float, mean_span: float) -> int:
    """The longest chunk of raw tokens whose corrupted encoder input fits `seq_len`."""
    raw = max(seq_len - 1, 2)
    while span_corruption_lengths(raw + 1, noise_density, mean_span)[0] <= seq_len:
        raw += 1
    return raw


def decoder_len(cfg: Any, seq_len: int) -> int:
    """Decoder length of training rows: derived for span corruption, else model.target_len or seq_len."""
    if cfg.objective == "span_corruption":
        raw = span_corruption_raw_len(seq_len, cfg.noise_density, cfg.mean_noise_span_length)
        return span_corruption_lengths(raw, cfg.noise_density, cfg.mean_noise_span_length)[1]
    return cfg.target_len or seq_len


def check_lengths(cfg: Any, seq_len: int) -> None:
    """Raise ConfigError (one line) if the objective cannot make rows at `seq_len`."""
    if seq_len < 4:
        raise ConfigError(f"T5 needs seq_len >= 4, got {seq_len}")
    if cfg.target_len and cfg.target_len < 2:
        raise ConfigError(f"model.target_len must be 0 or at least 2 (room for a token and EOS), got {cfg.target_len}")
    if cfg.objective == "span_corruption":
        if not 0.0 < cfg.noise_density < 1.0 or cfg.mean_noise_span_length < 1.0:
            raise ConfigError("span corruption needs 0 < model.noise_density < 1 and model.mean_noise_span_length >= 1")
        raw = span_corruption_raw_len(seq_len, cfg.noise_density, cfg.mean_noise_span_length)
        _, _, noise, spans = span_corruption_lengths(raw, cfg.noise_density, cfg.mean_noise_span_length)
        if spans > cfg.num_sentinels:
            raise ConfigError(f"seq_len {seq_len} makes {spans} noise spans but the vocabulary reserves "
                              f"{cfg.num_sentinels} sentinels; raise model.num_sentinels or lower --seq-len")
        if raw - noise < spans:
            raise ConfigError("model.noise_density is too high for model.mean_noise_span_length")


# ---- span corruption ----------------------------------------------------------------------------


def _random_partition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths of `parts` non-empty runs summing to `total`, uniform over all such compositions."""
    cuts = np.sort(rng.choice(total - 1, parts - 1, replace=False) + 1) if parts > 1 else np.zeros(0, np.int64)
    return np.diff(np.concatenate([[0], cuts, [total]]))


def noise_mask(length: int, noise_density: float, mean_span: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of noise tokens: alternating kept/noise runs, starting with a kept run."""
    _, _, noise, spans = span_corruption_lengths(length, noise_density, mean_span)
    runs = np.stack([_random_partition(length - noise, spans, rng), _random_partition(noise, spans, rng)], axis=1)
    return np.repeat(np.tile([False, True], spans), runs.reshape(-1))


def replace_spans(tokens: np.ndarray, mask: np.ndarray, vocab_size: int) -> np.ndarray:
    """Each run of masked tokens becomes one sentinel, `<extra_id_k>` = vocab_size - 1 - k for the k-th run."""
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    sentinel = vocab_size - np.cumsum(starts)  # vocab_size - 1 - k at the k-th run's first token
    return np.where(starts, sentinel, tokens)[~mask | starts]


def span_corruption(tokens: np.ndarray, rng: np.random.Generator, noise_density: float, mean_span: float,
                    vocab_size: int, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(encoder input, target) of one chunk: masked spans become sentinels; both end in EOS."""
    mask = noise_mask(len(tokens), noise_density, mean_span, rng)
    eos = np.array([eos_id], tokens.dtype)
    return (np.concatenate([replace_spans(tokens, mask, vocab_size), eos]),
            np.concatenate([replace_spans(tokens, ~mask, vocab_size), eos]))


def prefix_lm(tokens: np.ndarray, rng: np.random.Generator, target_len: int,
              eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(prefix + EOS, rest + EOS) of one chunk, split uniformly where the rest fits `target_len`."""
    n = len(tokens)
    split = int(rng.integers(max(1, n - target_len + 1), n))
    eos = np.array([eos_id], tokens.dtype)
    return np.concatenate([tokens[:split], eos]), np.concatenate([tokens[split:], eos])


# ---- rows and batches ---------------------------------------------------------------------------


def pack_pairs(pairs: list[tuple[list[int], list[int]]], seq_len: int, target_len: int,
               eos_id: int) -> dict[str, np.ndarray]:
    """Pack (input ids, target ids) pairs, in order, into rows; each part is cut to fit and ends in EOS."""
    units = [_pair_unit(inp, tgt, seq_len, target_len, eos_id) for inp, tgt in pairs]
    cursor = Cursor(range(len(units)), lambda i: [units[i]])
    rows = []
    while (row := _pair_row(cursor, seq_len, target_len)) is not None:
        rows.append(row)
    if not rows:
        raise DataError("no input/target pairs to train on")
    return stack(rows)


def _pair_unit(inp: list[int], tgt: list[int], seq_len: int, target_len: int, eos_id: int) -> tuple[np.ndarray, ...]:
    return (np.asarray([*inp[: seq_len - 1], eos_id], np.int32), np.asarray([*tgt[: target_len - 1], eos_id], np.int32))


def _pair_row(cursor: Cursor, seq_len: int, target_len: int) -> Row | None:
    """The next pairs that fit side by side in one row (encoder `seq_len`, decoder `target_len`)."""
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    used = [0, 0]
    while (unit := cursor.current()) is not None:
        if pairs and (used[0] + len(unit[0]) > seq_len or used[1] + len(unit[1]) > target_len):
            break
        pairs.append(unit)
        used = [used[0] + len(unit[0]), used[1] + len(unit[1])]
        cursor.next_unit()
    return _pairs_row(pairs, seq_len, target_len) if pairs else None


def _pairs_row(pairs: list[tuple[np.ndarray, np.ndarray]], seq_len: int, target_len: int) -> Row:
    """Encoder and decoder tokens with segment k + 1 for the k-th pair; zero padding after."""
    row = {k: np.zeros(n, np.int32) for k, n in (("encoder_inputs", seq_len), ("encoder_segments", seq_len),
                                                ("decoder_targets", target_len), ("decoder_segments", target_len))}
    at = [0, 0]
    for segment, parts in enumerate(pairs, 1):
        for side, (ids, (tok_key, seg_key)) in enumerate(zip(parts, (
                ("encoder_inputs", "encoder_segments"), ("decoder_targets", "decoder_segments")))):
            row[tok_key][at[side]:at[side] + len(ids)] = ids
            row[seg_key][at[side]:at[side] + len(ids)] = segment
            at[side] += len(ids)
    return row


def _pad_rows(seqs: list[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.zeros((len(seqs), width), np.int32)
    segments = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)], segments[i, : len(s)] = s, 1
    return tokens, segments


def finish_batch(encoder_inputs: np.ndarray, encoder_segments: np.ndarray, decoder_targets: np.ndarray,
                 decoder_segments: np.ndarray) -> dict[str, np.ndarray]:
    """Add decoder inputs (targets shifted right within each segment, start id 0) and loss weights."""
    B = decoder_targets.shape[0]
    previous = np.concatenate([np.zeros((B, 1), np.int32), decoder_targets[:, :-1]], axis=1)
    same = np.concatenate([np.zeros((B, 1), bool), decoder_segments[:, 1:] == decoder_segments[:, :-1]], axis=1)
    return {"encoder_inputs": encoder_inputs, "encoder_segments": encoder_segments,
            "decoder_inputs": np.where(same, previous, 0).astype(np.int32), "decoder_targets": decoder_targets,
            "decoder_segments": decoder_segments, "decoder_weights": (decoder_segments > 0).astype(np.float32)}


def row_maker(run: Any, tokenizer: Any) -> RowMaker:
    """The rows of the run's objective: corrupted chunks of concatenated documents, or packed pairs."""
    cfg, seq_len = run.model, run.data.seq_len
    target_len = decoder_len(cfg, seq_len)
    if cfg.objective == "seq2seq":
        return _seq2seq_maker(tokenizer, seq_len, target_len)
    if cfg.objective == "span_corruption":
        length = span_corruption_raw_len(seq_len, cfg.noise_density, cfg.mean_noise_span_length)
        spans = span_corruption_lengths(length, cfg.noise_density, cfg.mean_noise_span_length)[3]
        if spans > tokenizer.num_sentinels:
            raise DataError(f"span corruption needs {spans} sentinels but the tokenizer has "
                            f"{tokenizer.num_sentinels}; retrain it with more (model.num_sentinels)")
        corrupt = lambda t, rng: span_corruption(t, rng, cfg.noise_density, cfg.mean_noise_span_length,  # noqa: E731
                                                 tokenizer.vocab_size, tokenizer.eos_id)
    else:  # prefix LM: prefix and rest share the encoder budget (one EOS each side)
        length = seq_len - 1
        corrupt = lambda t, rng: prefix_lm(t, rng, target_len, tokenizer.eos_id)  # noqa: E731

    def units(record: Record, doc: Doc) -> list[np.ndarray]:
        ids = tokenizer.encode(record_text(record))
        return [np.asarray(ids, np.int32)] if ids else []

    def make_row(cursor: Cursor) -> Row | None:
        tokens = np.concatenate(take_tokens(cursor, length) or [np.zeros(0, np.int32)])
        return {"tokens": tokens} if len(tokens) == length else None  # an evaluation's short tail is dropped

    def finish(row: Row, rng: np.random.Generator) -> Row:
        inputs, targets = corrupt(row["tokens"], rng)
        return _squeeze(finish_batch(*_pad_rows([inputs], seq_len), *_pad_rows([targets], target_len)))

    return RowMaker(units, make_row, finish, lambda: {"tokens": np.full(length, tokenizer.eos_id, np.int32)})


def _seq2seq_maker(tokenizer: Any, seq_len: int, target_len: int) -> RowMaker:
    """Text-to-text pairs, whole, packed side by side in rows."""
    def units(record: Record, doc: Doc) -> list[tuple[np.ndarray, np.ndarray]]:
        pair = text_to_text_pair(record)
        if pair is None:
            return []
        return [_pair_unit(tokenizer.encode(pair["input"]), tokenizer.encode(pair["target"]), seq_len, target_len,
                           tokenizer.eos_id)]

    def finish(row: Row, rng: np.random.Generator) -> Row:
        del rng
        return _squeeze(finish_batch(*(row[k][None] for k in (
            "encoder_inputs", "encoder_segments", "decoder_targets", "decoder_segments"))))

    return RowMaker(units, lambda cursor: _pair_row(cursor, seq_len, target_len), finish,
                         lambda: _pairs_row([], seq_len, target_len))


def _squeeze(batch: dict[str, np.ndarray]) -> Row:
    return {k: v[0] for k, v in batch.items()}


# ---- text-to-text pairs -------------------------------------------------------------------------


def summary_pair(text: str) -> dict[str, str] | None:
    """The "summary line" task on one document: its body -> its first paragraph (or None if unsuitable)."""
    paragraphs = re.split(r"\n[ \t]*\n", text.strip())
    if len(paragraphs) < 2:
        return None
    head_lines = paragraphs[0].splitlines()
    if len(head_lines) == 2 and _RULE_LINE.match(head_lines[1]):  # a help topic's underlined title
        head_lines = head_lines[:1]
    head = " ".join(" ".join(head_lines).split())
    body = " ".join(line for line in "\n".join(paragraphs[1:]).splitlines() if not _RULE_LINE.match(line))
    body = " ".join(body.split())
    if not 3 <= len(head) <= 120 or len(body) < 80:
        return None
    return {"input": SUMMARY_PREFIX + body[:MAX_SUMMARY_INPUT_CHARS], "target": head}


def text_to_text_pair(record: Record) -> dict[str, str] | None:
    """An input/target record as it is; a text record through the offline "summary line" task."""
    if "input" in record:
        return {"input": record["input"], "target": record["target"]}
    return summary_pair(record.get("text", ""))


def text_to_text_pairs(records: list[Record]) -> list[dict[str, str]]:
    """The input/target pairs of records (see `text_to_text_pair`); DataError if there are none."""
    pairs = [p for p in map(text_to_text_pair, records) if p is not None]
    if not pairs:
        raise DataError("the data has no input/target pairs (jsonl records with 'input' and 'target' fields, "
                        "or documents whose first paragraph can serve as a summary)")
    return pairs


def sample_prompts(run: Any, records: list[Record], tokenizer: Any, count: int) -> list[str]:
    """Inputs for closing samples that fit the run's objective (sentinel spans, prefixes or task inputs)."""
    del tokenizer
    return sample_inputs(records, run.model.objective, count)


def sample_inputs(records: list[Record], objective: str, count: int = 3, words: int = 24) -> list[str]:
    """Inputs for closing samples: pair inputs for seq2seq; for pretraining, the first `words` words
    of a document with a middle stretch replaced by `<extra_id_0>` (span corruption) or cut off (prefix LM)."""
    if objective == "seq2seq":
        return [" ".join(p["input"].split()[: 3 * words]) for p in text_to_text_pairs(records)[:count]]
    out = []
    for r in records[:count]:
        w = (r["text"] if "text" in r else r["input"]).split()[:words]
        third = max(len(w) // 3, 1)
        out.append(" ".join(w[:2 * third]) if objective == "prefix_lm" else
                   " ".join(w[:third] + ["<extra_id_0>"] + w[2 * third:]))
    return out
