"""BERT's host side (numpy): examples for each task, MLM masking, the default offline fine-tuning
tasks, and Hugging Face tokenizers with zoo.tokenizer.Tokenizer's methods.

Special ids. A tokenizer trained here reserves the top three ids (`FAMILY.reserved_ids` = 3):
[CLS] = vocab_size - 1, [SEP] = vocab_size - 2, [MASK] = vocab_size - 3 (they decode as
`<extra_id_0..2>`), and pads with id 0. An `HFTokenizer` uses its own [CLS]/[SEP]/[MASK]/[PAD] (or
RoBERTa's <s>, </s>, <mask>, <pad>), so converted checkpoints see exactly the ids they were trained on.

Rows (`row_maker`; each document makes whole rows, [CLS] ... [SEP] padded to seq_len):
  pretrain + NSP  [CLS] A [SEP] B [SEP] from consecutive sentences of one document; half of the
                  time (always when a chunk holds one sentence) B is read from another document
                  instead (label 1, "random next"; 0 is "is next"), as in BERT's data generation.
  pretrain        RoBERTa's DOC-SENTENCES: consecutive whole sentences of one document, up to seq_len.
  classify        [CLS] text [SEP] (text_pair [SEP]) and the record's `label`: an integer class, or a
                  float when model.num_labels is 1 (regression, STS-B); records without labels get
                  the default task (`docstring_kinds`) if it labels them, and are skipped otherwise.
  tag             the default task (`literal_runs`): which tokens were marked up as code literals.

Masking (`prepare_batch_fn`): each row predicts round(0.15 * n) of its n non-special tokens (at
least 1, at most ceil(0.15 * seq_len) slots per row); 80% of them become [MASK], 10% a random
ordinary id, 10% stay. Noise comes from the generator `zoo.data` seeds per global example
(seed, step, slot) (dynamic masking, RoBERTa) or from one seeded by the row's document and place
in it (static masking, BERT: a row keeps its mask every epoch); either way resuming, on any
number of processes, replays the same masks.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Sequence

import numpy as np

from zoo import corpus
from zoo.errors import DataError
from zoo.rows import Cursor, Doc, RowMaker
from zoo.sources import Record, record_text

SPECIAL_NAMES = ("[CLS]", "[SEP]", "[MASK]")
SHORT_SEQ_PROB = 0.1  # BERT: share of NSP pairs built to a random shorter target length
OTHER_DOCUMENT_TRIES = 100  # random draws for a "not next" document with text before giving up
NOT_NEXT = 1  # NSP label of a random second segment (Hugging Face's next_sentence_label convention)
Rows = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Specials:
    """Ids of BERT's special tokens in one tokenizer."""

    cls: int
    sep: int
    mask: int
    pad: int


def special_ids(tokenizer: Any) -> Specials:
    """[CLS]/[SEP]/[MASK]/pad ids: an HFTokenizer's own, else the top three reserved ids of a zoo tokenizer."""
    if hasattr(tokenizer, "cls_id"):  # a Hugging Face tokenizer: its own named specials
        if None in (tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id):
            raise DataError("the tokenizer has no [CLS]/[SEP]/[MASK] tokens, which BERT needs")
        return Specials(tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id, tokenizer.pad_id)
    if tokenizer.num_sentinels < len(SPECIAL_NAMES):
        raise DataError(f"the tokenizer reserves {tokenizer.num_sentinels} top ids but BERT needs "
                        f"{len(SPECIAL_NAMES)} ([CLS], [SEP], [MASK]); use a tokenizer trained for a BERT run")
    return Specials(cls=tokenizer.sentinel_id(0), sep=tokenizer.sentinel_id(1), mask=tokenizer.sentinel_id(2),
                    pad=tokenizer.pad_id)


def num_predictions(seq_len: int, probability: float) -> int:
    """MLM slots per row: enough for round(p * n) of any row's n <= seq_len tokens."""
    return max(1, math.ceil(probability * seq_len))


# ---- rows ----------------------------------------------------------------------------------------

def row_maker(run: Any, tokenizer: Any) -> RowMaker:
    """The rows of `run.model.task` (see the module docstring), one or more whole rows per document."""
    cfg, L = run.model, run.data.seq_len
    sp = special_ids(tokenizer)
    if cfg.task == "classify":
        units = _classify_units(cfg.num_labels, tokenizer, L, sp)
    elif cfg.task == "tag":
        units = lambda record, doc: tag_rows(record, doc, tokenizer, L, sp)  # noqa: E731
    elif cfg.nsp:
        units = _nsp_units(tokenizer, L, sp)
    else:
        def units(record: Record, doc: Doc) -> list[Rows]:
            rows = doc_sentences([_sentences(record, tokenizer)], L - 2)
            return [_row(a, None, L, sp, doc, k) for k, a in enumerate(rows)]
    prepare = prepare_batch_fn(run, tokenizer)

    def next_row(cursor: Cursor) -> Rows | None:
        row = cursor.current()
        if row is not None:
            cursor.next_unit()
        return row

    def finish(row: Rows, rng: np.random.Generator) -> Rows:
        return {k: v[0] for k, v in prepare({k: np.asarray(v)[None] for k, v in row.items()}, [rng]).items()}

    def empty() -> Rows:
        row = _row([], None, L, sp, None, 0, label=0.0 if cfg.num_labels == 1 else 0)
        return {**row, "tags": np.full(L, -1, np.int32)} if cfg.task == "tag" else row
    return RowMaker(units, next_row, finish, empty)


def _row(a: Sequence[int], b: Sequence[int] | None, L: int, sp: Specials, doc: Doc | None, k: int,
         label: int | float = 0) -> Rows:
    """[CLS] A [SEP] (B [SEP]) padded to L, token types 0 for A and 1 for B; `row` names it for static masking."""
    tokens, types = np.full(L, sp.pad, np.int32), np.zeros(L, np.int32)
    first = [sp.cls, *a, sp.sep]
    tokens[:len(first)] = first
    if b is not None:
        tokens[len(first):len(first) + len(b) + 1] = [*b, sp.sep]
        types[len(first):len(first) + len(b) + 1] = 1
    key = 0 if doc is None else (doc.index << 20) + k
    labels = np.float32(label) if isinstance(label, float) else np.int32(label)
    return {"tokens": tokens, "token_types": types, "labels": labels, "row": np.int64(key)}


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n\s*")


def split_sentences(text: str) -> list[str]:
    """Sentences, each keeping the whitespace after it, cut after . ! ? + space and at blank lines."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        out.append(text[start:m.end()])
        start = m.end()
    out.append(text[start:])
    return [s for s in out if s.strip()]


def _sentences(record: Record, tokenizer: Any) -> list[list[int]]:
    """A document as its tokenized, non-empty sentences."""
    return [ids for ids in tokenizer.encode_batch(split_sentences(record_text(record))) if ids]


def _nsp_units(tokenizer: Any, L: int, sp: Specials) -> Callable[[Record, Doc], list[Rows]]:
    """A document's NSP pairs; random second segments come from other documents of the same split."""
    def units(record: Record, doc: Doc) -> list[Rows]:
        if len(doc.source) < 2:
            raise DataError("next-sentence prediction needs at least 2 documents (or set model.nsp=false)")
        sentences = _sentences(record, tokenizer)
        if not sentences:
            return []
        rng = doc.rng(0x5EED)

        def other() -> list[list[int]]:
            for _ in range(OTHER_DOCUMENT_TRIES):  # a document with text, other than this one
                index = (doc.index + int(rng.integers(1, len(doc.source)))) % len(doc.source)
                found = _sentences(doc.source[index], tokenizer)
                if found:
                    return found
            raise DataError(f"{OTHER_DOCUMENT_TRIES} random documents in a row had no text for next-sentence "
                            f"prediction; check the data (or set model.nsp=false)")
        pairs = nsp_pairs(sentences, other, L - 3, rng)
        return [_row(a, b, L, sp, doc, k, label) for k, (a, b, label) in enumerate(pairs)]
    return units


def nsp_pairs(doc: list[list[int]], other: Callable[[], list[list[int]]], max_tokens: int,
              rng: np.random.Generator) -> list[tuple[list[int], list[int], int]]:
    """(A, B, label) segment pairs of one document, at most `max_tokens` tokens together, BERT's recipe.

    Sentences accumulate into a chunk up to a target length; A is the chunk's first 1..k-1
    sentences and B the rest (label 0) or, half of the time, text from `other()` (the sentences of
    a random other document; label 1), the unused sentences going back for the next chunk.
    """
    pairs = []
    target = max_tokens if rng.random() >= SHORT_SEQ_PROB else int(rng.integers(2, max_tokens + 1))
    chunk: list[list[int]] = []
    length, i = 0, 0
    while i < len(doc):
        chunk.append(doc[i])
        length += len(doc[i])
        if i == len(doc) - 1 or length >= target:
            a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
            a = [t for s in chunk[:a_end] for t in s]
            if len(chunk) == 1 or rng.random() < 0.5:
                sentences = other()
                b: list[int] = []
                for s in sentences[int(rng.integers(len(sentences))):]:
                    b += s
                    if len(b) >= target - len(a):
                        break
                label = NOT_NEXT
                i -= len(chunk) - a_end  # the sentences not used go back for the next chunk
            else:
                b, label = [t for s in chunk[a_end:] for t in s], 1 - NOT_NEXT
            a, b = _truncate_pair(a, b, max_tokens, rng)
            if a and b:
                pairs.append((a, b, label))
            chunk, length = [], 0
        i += 1
    return pairs


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: np.random.Generator) -> tuple[list, list]:
    """Shorten the longer segment until both fit, each from a random end (BERT's truncate_seq_pair)."""
    la, lb = fitted_lengths(len(a), len(b), max_tokens)
    cut = lambda s, n: s[len(s) - n:] if rng.random() < 0.5 else s[:n]  # noqa: E731
    return (cut(a, la) if la < len(a) else a), (cut(b, lb) if lb < len(b) else b)


def doc_sentences(docs: list[list[list[int]]], max_tokens: int) -> list[list[int]]:
    """RoBERTa's DOC-SENTENCES rows: whole consecutive sentences of one document, up to max_tokens."""
    rows = []
    for doc in docs:
        current: list[int] = []
        for s in doc:
            if current and len(current) + len(s) > max_tokens:
                rows.append(current)
                current = []
            while len(s) > max_tokens:  # a sentence longer than a row fills rows on its own
                rows.append(s[:max_tokens])
                s = s[max_tokens:]
            current = current + s
        if current:
            rows.append(current)
    return rows


# ---- default fine-tuning tasks ---------------------------------------------------------------------

DOCSTRING_KINDS = {"function": 0, "class": 1}  # class docstrings are the positive (minority) class


def _classify_units(num_labels: int, tokenizer: Any, L: int, sp: Specials) -> Callable[[Record, Doc], list[Rows]]:
    """One row per labelled record (a pair when it has `text_pair`); unlabelled ones take the default task."""
    kinds: dict[str, str] | None = None

    def units(record: Record, doc: Doc) -> list[Rows]:
        nonlocal kinds
        if "label" in record:
            label = parse_label(record["label"], num_labels)
        else:
            kinds = docstring_kinds() if kinds is None else kinds
            if record.get("text") not in kinds:
                return []
            label = DOCSTRING_KINDS[kinds[record["text"]]]
        text = record["text"] if "text" in record else record_text(record)
        a = tokenizer.encode(text)
        if "text_pair" not in record:
            return [_row(a[:L - 2], None, L, sp, doc, 0, label)]
        a, b = truncate_longest(a, tokenizer.encode(record["text_pair"]), L - 3)
        return [_row(a, b, L, sp, doc, 0, label)]
    return units


def parse_label(text: str, num_labels: int) -> int | float:
    """A record's label: a float target when `num_labels` is 1 (regression), else a class in 0..num_labels-1."""
    try:
        value = float(text) if num_labels == 1 else int(text)
    except ValueError:
        raise DataError(f"label {text!r} is not a{' number' if num_labels == 1 else 'n integer class'}") from None
    if num_labels > 1 and not 0 <= value < num_labels:
        raise DataError(f"label {value} is outside 0..{num_labels - 1}; set model.num_labels (test splits "
                        f"without labels cannot be trained or evaluated on)")
    return value


def truncate_longest(a: list[int], b: list[int], max_tokens: int) -> tuple[list[int], list[int]]:
    """Drop tokens from the end of the longer segment until both fit (deterministic, for fine-tuning)."""
    la, lb = fitted_lengths(len(a), len(b), max_tokens)
    return a[:la], b[:lb]


def fitted_lengths(la: int, lb: int, max_tokens: int) -> tuple[int, int]:
    """Segment lengths after taking one token at a time from the longer one (B on ties) until both fit."""
    while la + lb > max_tokens:
        if la > lb:
            la -= 1
        else:
            lb -= 1
    return la, lb


def docstring_kinds() -> dict[str, str]:
    """The default classification task: does a builtin-corpus docstring document a class or a function?

    Labels are where the text really came from in the standard library (the AST node that owns the
    docstring, recorded by `zoo.corpus`); module docstrings and language reference topics are left
    out. Returns {docstring text: "class" | "function"}.
    """
    return {doc: kind for doc, kind in corpus.document_kinds().items() if kind in DOCSTRING_KINDS}


# ``x``, `x` and :role:`x` (reST), and "x" / 'x' with no whitespace inside (pydoc text, plain docstrings)
_LITERAL = re.compile(r"(?::[\w:.-]+:)?``(?P<a>[^`\n]+?)``|(?::[\w:.-]+:)?`~?(?P<b>[^`\n]+?)`"
                      r"|(?<![\w\"'`])[\"'](?P<c>[^\s\"'`]+)[\"'](?![\w\"'`])")


def literal_runs(text: str) -> list[tuple[str, int]]:
    """The default tagging task: `text` with its literal markup removed, as (run, 1 if it was a literal)."""
    runs, start = [], 0
    for m in _LITERAL.finditer(text):
        runs += [(text[start:m.start()], 0), (m.group("a") or m.group("b") or m.group("c"), 1)]
        start = m.end()
    runs.append((text[start:], 0))
    return [(r, label) for r, label in runs if r.strip()]


def tag_rows(record: Record, doc: Doc, tokenizer: Any, L: int, sp: Specials) -> list[Rows]:
    """Rows of a document's words (whitespace-split runs of `literal_runs`, tokenized one by one, like
    NER input) with a tag per token: 1 inside a literal, 0 outside, -1 on [CLS]/[SEP]/padding."""
    words, tags = [], []
    for run, label in literal_runs(record_text(record)):
        for w in run.split():
            words.append(w)
            tags.append(label)
    tokens = [(t, y) for ids, y in zip(tokenizer.encode_batch(words), tags) for t in ids]
    rows = []
    for k, s in enumerate(range(0, len(tokens), L - 2)):
        part = tokens[s:s + L - 2]
        row = _row([t for t, _ in part], None, L, sp, doc, k)
        row["tags"] = np.full(L, -1, np.int32)
        row["tags"][1:1 + len(part)] = [y for _, y in part]
        rows.append(row)
    return rows


# ---- batches -------------------------------------------------------------------------------------

def prepare_batch_fn(run: Any, tokenizer: Any) -> Callable[[Rows, Sequence[np.random.Generator]], Rows]:
    """The host-side batch function of a run's task: (rows, one generator per row) -> model inputs
    (the same keys for every task, see bert.init_batch)."""
    cfg, L, seed = run.model, run.data.seq_len, run.train.seed
    sp = special_ids(tokenizer)

    def common(rows: Rows) -> dict[str, np.ndarray]:
        tokens = rows["tokens"]
        B = len(tokens)
        return {"inputs": tokens, "segments": (tokens != sp.pad).astype(np.int32), "token_types": rows["token_types"],
                "labels": rows["labels"], "label_weights": np.ones(B, np.float32)}

    if cfg.task == "classify":
        def classify(rows: Rows, rngs: Sequence[np.random.Generator]) -> dict[str, np.ndarray]:
            B = len(rows["tokens"])
            zeros = np.zeros((B, 1), np.int32)
            return {**common(rows), "target_positions": zeros, "targets": zeros, "weights": zeros.astype(np.float32)}
        return classify
    if cfg.task == "tag":
        def tag(rows: Rows, rngs: Sequence[np.random.Generator]) -> dict[str, np.ndarray]:
            tags = rows["tags"]
            positions = np.broadcast_to(np.arange(L, dtype=np.int32), tags.shape)
            out = {**common(rows), "target_positions": positions, "targets": np.maximum(tags, 0),
                   "weights": (tags >= 0).astype(np.float32)}
            return {**out, "label_weights": np.zeros(len(tags), np.float32)}
        return tag

    P = num_predictions(L, cfg.mlm_probability)
    specials = np.array([sp.cls, sp.sep, sp.mask, sp.pad])
    reserved = [i for i in (tokenizer.pad_id, tokenizer.eos_id, tokenizer.unk_id) if i is not None and i >= 0]
    ordinary = np.setdiff1d(np.arange(tokenizer.vocab_size), np.concatenate([specials, reserved]))

    def pretrain(rows: Rows, rngs: Sequence[np.random.Generator]) -> dict[str, np.ndarray]:
        if not cfg.dynamic_masking:  # seeded by the row itself: the same mask whenever the row comes back
            rngs = [np.random.default_rng([seed, int(r), 0x3A5C]) for r in rows["row"]]
        per_row = [_draws(rng, 1, L, P, len(ordinary)) for rng in rngs]
        draws = tuple(np.concatenate(parts) for parts in zip(*per_row))
        masked = mask_tokens(rows["tokens"], specials, sp.mask, ordinary, cfg.mlm_probability, P, *draws)
        out = {**common(rows), **masked}
        if not cfg.nsp:
            out["label_weights"] = np.zeros_like(out["label_weights"])
        return out
    return pretrain


def _draws(rng: np.random.Generator, B: int, L: int, P: int, n_ordinary: int) -> tuple[np.ndarray, ...]:
    return rng.random((B, L)), rng.random((B, P)), rng.integers(n_ordinary, size=(B, P))


def mask_tokens(tokens_BL: np.ndarray, specials: np.ndarray, mask_id: int, ordinary: np.ndarray, probability: float,
                P: int, order_BL: np.ndarray, action_BP: np.ndarray, random_BP: np.ndarray) -> dict[str, np.ndarray]:
    """BERT's masking from given uniform draws: inputs, and `P` target slots (positions, ids, weights) per row.

    The first round(p * n) candidates in the random order `order_BL` are predicted; `action_BP` < 0.8
    puts [MASK] there, < 0.9 the ordinary id `ordinary[random_BP]`, otherwise the token stays.
    """
    candidate_BL = ~np.isin(tokens_BL, specials)
    n_candidates = candidate_BL.sum(axis=1)
    n_masked = np.where(n_candidates > 0, np.clip(np.rint(n_candidates * probability), 1, P), 0)
    slots_BP = np.argsort(np.where(candidate_BL, order_BL, 2.0), axis=1, kind="stable")[:, :P]
    chosen_BP = np.arange(P)[None, :] < n_masked[:, None]
    positions_BP = np.where(chosen_BP, slots_BP, 0).astype(np.int32)
    targets_BP = np.take_along_axis(tokens_BL, positions_BP, axis=1)
    replacement_BP = np.where(action_BP < 0.8, mask_id, np.where(action_BP < 0.9, ordinary[random_BP], targets_BP))
    inputs_BL = tokens_BL.copy()
    # Unchosen slots point at position 0 ([CLS]) and write back its own id, so they change nothing.
    np.put_along_axis(inputs_BL, positions_BP, np.where(chosen_BP, replacement_BP, targets_BP), axis=1)
    return {"inputs": inputs_BL.astype(np.int32), "target_positions": positions_BP,
            "targets": np.where(chosen_BP, targets_BP, 0).astype(np.int32), "weights": chosen_BP.astype(np.float32)}

