"""BERT's host side (numpy): examples for each task, MLM masking, the default offline fine-tuning
tasks, and Hugging Face tokenizers with zoo.tokenizer.Tokenizer's methods.

Special ids. A tokenizer trained here reserves the top three ids (`FAMILY.reserved_ids` = 3):
[CLS] = vocab_size - 1, [SEP] = vocab_size - 2, [MASK] = vocab_size - 3 (they decode as
`<extra_id_0..2>`), and pads with id 0. An `HFTokenizer` uses its own [CLS]/[SEP]/[MASK]/[PAD] (or
RoBERTa's <s>, </s>, <mask>, <pad>), so converted checkpoints see exactly the ids they were trained on.

Examples (`make_examples`, one fixed table per split; every row is [CLS] ... [SEP] padded to seq_len):
  pretrain + NSP  [CLS] A [SEP] B [SEP] from consecutive sentences of one document; half of the
                  time (always when a chunk holds one sentence) B is read from another document
                  instead (label 1, "random next"; 0 is "is next"), as in BERT's data generation.
  pretrain        RoBERTa's DOC-SENTENCES: consecutive whole sentences of one document, up to seq_len.
  classify        [CLS] text [SEP] and the record's integer `label`; records without labels get the
                  default task (`docstring_kinds`).
  tag             the default task (`literal_runs`): which tokens were marked up as code literals.

Masking (`prepare_batch_fn`): each row predicts round(0.15 * n) of its n non-special tokens (at
least 1, at most ceil(0.15 * seq_len) slots per row); 80% of them become [MASK], 10% a random
ordinary id, 10% stay. Noise comes from the generator `zoo.data.Batches` seeds with the batch index
(dynamic masking, RoBERTa) or from one seeded by the row id (static masking, BERT: a row keeps its
mask every epoch); either way resuming replays the same masks.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Sequence

import numpy as np

from zoo import corpus
from zoo.data import DataError, record_text

SPECIAL_NAMES = ("[CLS]", "[SEP]", "[MASK]")
SHORT_SEQ_PROB = 0.1  # BERT: share of NSP pairs built to a random shorter target length
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


# ---- examples ------------------------------------------------------------------------------------

def make_examples(records: list[dict[str, str]], run: Any, tokenizer: Any) -> Rows:
    """The fixed table of rows of one split for `run.model.task` (see the module docstring)."""
    cfg, L = run.model, run.data.seq_len
    sp = special_ids(tokenizer)
    rng = np.random.default_rng([run.train.seed, 0x5EED])
    if cfg.task == "classify":
        texts, labels = classify_records(records, cfg.num_labels)
        return _table([(ids[:L - 2], None) for ids in tokenizer.encode_batch(texts)], L, sp,
                      labels=np.asarray(labels, np.int32))
    if cfg.task == "tag":
        return tag_examples(records, tokenizer, L, sp)
    docs = _sentences(records, tokenizer)
    pairs = nsp_pairs(docs, L - 3, rng) if cfg.nsp else [(a, None) for a in doc_sentences(docs, L - 2)]
    labels = np.asarray([label for _, _, label in pairs] if cfg.nsp else np.zeros(len(pairs)), np.int32)
    return _table([p[:2] for p in pairs], L, sp, labels=labels)


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n\s*")


def split_sentences(text: str) -> list[str]:
    """Sentences, each keeping the whitespace after it, cut after . ! ? + space and at blank lines."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        out.append(text[start:m.end()])
        start = m.end()
    out.append(text[start:])
    return [s for s in out if s.strip()]


def _sentences(records: list[dict[str, str]], tokenizer: Any) -> list[list[list[int]]]:
    """Each document as a list of tokenized sentences (one encode_batch call for all)."""
    per_doc = [split_sentences(record_text(r)) for r in records]
    flat = tokenizer.encode_batch([s for doc in per_doc for s in doc])
    docs, i = [], 0
    for doc in per_doc:
        docs.append([ids for ids in flat[i:i + len(doc)] if ids])
        i += len(doc)
    return [d for d in docs if d]


def nsp_pairs(docs: list[list[list[int]]], max_tokens: int,
              rng: np.random.Generator) -> list[tuple[list[int], list[int], int]]:
    """(A, B, label) segment pairs of at most `max_tokens` tokens together, BERT's recipe.

    Sentences of a document accumulate into a chunk up to a target length; A is the chunk's first
    1..k-1 sentences and B the rest (label 0) or, half of the time, text from a random other
    document (label 1), the unused sentences going back to the document for the next chunk.
    """
    if len(docs) < 2:
        raise DataError("next-sentence prediction needs at least 2 documents (or set model.nsp=false)")
    pairs = []
    for d, doc in enumerate(docs):
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
                    other = docs[(d + int(rng.integers(1, len(docs)))) % len(docs)]
                    b: list[int] = []
                    for s in other[int(rng.integers(len(other))):]:
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
    la, lb = len(a), len(b)
    while la + lb > max_tokens:
        if la > lb:
            la -= 1
        else:
            lb -= 1
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


def _table(pairs: Sequence[tuple[list[int], list[int] | None]], L: int, sp: Specials, **columns: np.ndarray) -> Rows:
    """Rows [CLS] A [SEP] (B [SEP]) padded to L, with token types 0 for A and 1 for B."""
    if not pairs:
        raise DataError("the data makes no BERT examples; use more text or a longer --seq-len")
    tokens = np.full((len(pairs), L), sp.pad, np.int32)
    types = np.zeros((len(pairs), L), np.int32)
    for n, (a, b) in enumerate(pairs):
        first = [sp.cls, *a, sp.sep]
        tokens[n, :len(first)] = first
        if b is not None:
            tokens[n, len(first):len(first) + len(b) + 1] = [*b, sp.sep]
            types[n, len(first):len(first) + len(b) + 1] = 1
    return {"tokens": tokens, "token_types": types, "row": np.arange(len(pairs), dtype=np.int64), **columns}


# ---- default fine-tuning tasks ---------------------------------------------------------------------

DOCSTRING_KINDS = {"function": 0, "class": 1}  # class docstrings are the positive (minority) class


def classify_records(records: list[dict[str, str]], num_labels: int) -> tuple[list[str], list[int]]:
    """(texts, labels): the records' own integer labels, or the default `docstring_kinds` task."""
    if records and all("label" in r for r in records):
        try:
            labels = [int(r["label"]) for r in records]
        except ValueError:
            raise DataError("classification labels must be integers 0..num_labels-1") from None
        texts = [record_text(r) for r in records]
    else:
        kinds = docstring_kinds()
        chosen = [(r["text"], kinds[r["text"]]) for r in records if "text" in r and r["text"] in kinds]
        if not chosen:
            raise DataError("model.task=classify needs records with a 'label' field; the default task labels "
                            "only the builtin corpus (use --data builtin)")
        texts, labels = [t for t, _ in chosen], [DOCSTRING_KINDS[k] for _, k in chosen]
    bad = [y for y in labels if not 0 <= y < num_labels]
    if bad:
        raise DataError(f"label {bad[0]} is outside 0..{num_labels - 1}; set model.num_labels")
    return texts, labels


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


def tag_examples(records: list[dict[str, str]], tokenizer: Any, L: int, sp: Specials) -> Rows:
    """Rows of words (whitespace-split runs of `literal_runs`, tokenized one by one, like NER input)
    with a tag per token: 1 inside a literal, 0 outside, -1 on [CLS]/[SEP]/padding."""
    words, tags = [], []
    bounds = [0]
    for r in records:
        for run, label in literal_runs(record_text(r)):
            for w in run.split():
                words.append(w)
                tags.append(label)
        bounds.append(len(words))
    ids = tokenizer.encode_batch(words)
    rows, row_tags = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        doc = [(t, tags[k]) for k in range(lo, hi) for t in ids[k]]
        for s in range(0, len(doc), L - 2):
            rows.append([t for t, _ in doc[s:s + L - 2]])
            row_tags.append([y for _, y in doc[s:s + L - 2]])
    table = _table([(r, None) for r in rows], L, sp)
    tag_table = np.full(table["tokens"].shape, -1, np.int32)
    for n, y in enumerate(row_tags):
        tag_table[n, 1:1 + len(y)] = y
    return {**table, "tags": tag_table}


# ---- batches -------------------------------------------------------------------------------------

def prepare_batch_fn(run: Any, tokenizer: Any) -> Callable[[Rows, np.random.Generator], dict[str, np.ndarray]]:
    """The host-side batch function of a run's task (same keys for every task, see bert.init_batch)."""
    cfg, L, seed = run.model, run.data.seq_len, run.train.seed
    sp = special_ids(tokenizer)

    def common(rows: Rows) -> dict[str, np.ndarray]:
        tokens = rows["tokens"]
        B = len(tokens)
        return {"inputs": tokens, "segments": (tokens != sp.pad).astype(np.int32), "token_types": rows["token_types"],
                "labels": rows.get("labels", np.zeros(B, np.int32)), "label_weights": np.ones(B, np.float32)}

    if cfg.task == "classify":
        def classify(rows: Rows, rng: np.random.Generator) -> dict[str, np.ndarray]:
            B = len(rows["tokens"])
            zeros = np.zeros((B, 1), np.int32)
            return {**common(rows), "target_positions": zeros, "targets": zeros, "weights": zeros.astype(np.float32)}
        return classify
    if cfg.task == "tag":
        def tag(rows: Rows, rng: np.random.Generator) -> dict[str, np.ndarray]:
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

    def pretrain(rows: Rows, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if cfg.dynamic_masking:
            draws = _draws(rng, len(rows["tokens"]), L, P, len(ordinary))
        else:  # one generator per row, seeded by the row: the same mask whenever the row comes back
            per_row = [_draws(np.random.default_rng([seed, int(r), 0x3A5C]), 1, L, P, len(ordinary))
                       for r in rows["row"]]
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

