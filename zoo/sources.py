"""Random-access record sources, read lazily: nothing is loaded before a record is asked for.

A source is a sequence of records (`len(source)`, `source[i]`), each a dict of strings:
`{"text"}`, optionally with `"label"` and a second segment `"text_pair"`, or `{"input", "target"}`
for text-to-text tasks. Specs (`--data`):

  builtin          the embedded corpus of `zoo.corpus` (small, held in memory)
  text:GLOB        local files: `.jsonl` (one JSON record per line) and `.txt` (documents separated
                   by blank lines); their line offsets are indexed once, 16 bytes per document
  arrayrecord:GLOB ArrayRecord files whose records are UTF-8 JSON records (or plain text)
  tfds:NAME        a prepared TFDS dataset through `tfds.data_source` (ArrayRecord, no TensorFlow),
                   mapped to records by `zoo.datasets`

Sources without splits (text, arrayrecord) give `valid_fraction` of their records, chosen by a
seeded hash of the record index, to the validation split. Sources hold only paths and index
arrays, so they pickle cheaply into grain worker processes, which reopen files themselves.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Iterator, Protocol, Sequence

import numpy as np

from zoo import corpus
from zoo.errors import DataError

Record = dict[str, str]
SPLITS = ("train", "validation")
_CHUNK = 1 << 24  # bytes read at a time while indexing


class Source(Protocol):
    """A random-access sequence of records."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Record: ...


def open_source(spec: str, split: str, valid_fraction: float = 0.02, seed: int = 0) -> Source:
    """The records of one split of a source spec (see the module docstring); DataError if unusable."""
    if spec == "builtin":
        if split not in SPLITS:
            raise DataError(f"the builtin corpus has splits train and validation, not {split!r}")
        return RecordList([{"text": t} for t in corpus.builtin_split(split)])
    kind, _, rest = spec.partition(":")
    if kind == "tfds" and rest:
        from zoo import datasets  # TFDS is imported only by runs that read it
        return datasets.open_tfds(rest, split)
    if kind in ("text", "arrayrecord") and rest:
        if split not in SPLITS:
            raise DataError(f"{kind} sources have splits train and validation, not {split!r}")
        whole = TextFiles(_paths(rest)) if kind == "text" else ArrayRecords(_paths(rest))
        if len(whole) == 0:
            raise DataError(f"the files matching {rest!r} hold no text")
        whole[0], whole[len(whole) - 1]  # a malformed first or last record fails now, not mid-run
        return split_source(whole, split, valid_fraction, seed)
    raise DataError(f"unknown data source {spec!r}; use builtin, text:GLOB, arrayrecord:GLOB or tfds:NAME")


def record_text(record: Record) -> str:
    """A record's text for language modelling: `text` (and `text_pair`), or `input` and `target`."""
    if "text" in record:
        return record["text"] + (" " + record["text_pair"] if "text_pair" in record else "")
    return record.get("input", "") + " " + record.get("target", "")


def record_strings(record: Record) -> list[str]:
    """Every string of a record but its label (what a tokenizer learns from)."""
    return [v for k, v in record.items() if k != "label"]


def head(source: Source, count: int) -> list[Record]:
    """The first `count` records (all if fewer)."""
    return [source[i] for i in range(min(count, len(source)))]


def sample(source: Source, max_chars: int, seed: int = 0) -> Iterator[Record]:
    """Records in a seeded random order until they hold `max_chars` characters (or run out).

    What a tokenizer is trained on: the same records for the same source and seed, and a read
    that costs the same on 10 MB as on 500 GB.
    """
    order = np.random.default_rng([seed, 0x70CE]).permutation(len(source)) if len(source) <= 1 << 24 \
        else np.random.default_rng([seed, 0x70CE]).integers(len(source), size=1 << 20)
    used = 0
    for i in order:
        if used >= max_chars:
            return
        record = source[int(i)]
        used += sum(len(s) for s in record_strings(record))
        yield record


def iterate(source: Source) -> Iterator[Record]:
    """Every record in order."""
    return (source[i] for i in range(len(source)))


class RecordList:
    """Records held in memory (the builtin corpus, tests, notebooks)."""

    def __init__(self, records: Sequence[Record]):
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Record:
        return self.records[index]


class Subset:
    """The records of `base` at `indices` (int64), in that order."""

    def __init__(self, base: Source, indices: np.ndarray):
        self.base, self.indices = base, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Record:
        return self.base[int(self.indices[index])]


def split_source(source: Source, split: str, valid_fraction: float, seed: int) -> Subset:
    """The train or validation part of a source without splits: a seeded hash of each record index.

    A record's side depends only on its index and the seed; at least one record goes each way
    when the source has two or more.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise DataError(f"data.valid_fraction must be between 0 and 1 (exclusive), got {valid_fraction}")
    n = len(source)
    score = _hash_unit(np.arange(n, dtype=np.uint64), seed)
    valid = score < valid_fraction
    if n >= 2 and not valid.any():
        valid[np.argmin(score)] = True
    if n >= 2 and valid.all():
        valid[np.argmax(score)] = False
    return Subset(source, np.flatnonzero(valid if split == "validation" else ~valid))


def _hash_unit(x: np.ndarray, seed: int) -> np.ndarray:
    """A uniform float in [0, 1) per uint64 (splitmix64 of x mixed with the seed)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _paths(pattern: str) -> list[str]:
    paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
    if not paths:
        raise DataError(f"no files match {pattern!r}")
    return paths


class TextFiles:
    """Documents of .txt and .jsonl files, located by byte offsets indexed once at open.

    Each file is scanned in 16 MB chunks for line ends; only the (start, end) offsets of its
    documents are kept. File handles open on first read in each process.
    """

    def __init__(self, paths: list[str]):
        self.paths = paths
        spans, counts = [], []
        for path in paths:
            if path.endswith(".gz"):
                raise DataError(f"{path}: gzip files cannot be read by offset; decompress them first")
            try:
                s = _index_file(path, paragraphs=not path.endswith(".jsonl"))
            except OSError as err:
                raise DataError(f"cannot read {path}: {err.strerror or err}") from None
            spans.append(s)
            counts.append(len(s))
        self.spans = np.concatenate(spans) if spans else np.zeros((0, 2), np.int64)
        self.file_of = np.repeat(np.arange(len(paths), dtype=np.int32), counts)
        self._files: dict[int, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.spans)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}}

    def __getitem__(self, index: int) -> Record:
        if not 0 <= index < len(self.spans):
            raise IndexError(index)
        f = self._file(int(self.file_of[index]))
        start, end = self.spans[index]
        f.seek(int(start))
        raw = f.read(int(end - start))
        path = self.paths[int(self.file_of[index])]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path} at byte {start} is not UTF-8 ({err.reason})") from None
        if not path.endswith(".jsonl"):
            return {"text": text}
        return parse_json_record(text, f"{path} at byte {start}")

    def _file(self, number: int) -> Any:
        if self._pid != os.getpid():  # a forked worker must not share its parent's file positions
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(number)
        if f is None:
            try:
                f = self._files[number] = open(self.paths[number], "rb")
            except OSError as err:
                raise DataError(f"cannot read {self.paths[number]}: {err.strerror or err}") from None
        return f


def _index_file(path: str, paragraphs: bool) -> np.ndarray:
    """(start, end) byte offsets of a file's non-blank lines, or of its paragraphs (runs of them)."""
    out: list[np.ndarray] = []
    in_run, run_start, last_end = False, 0, 0  # a paragraph may continue from one chunk to the next
    for starts, ends in _lines(path):
        filled = ends > starts
        if not paragraphs:
            out.append(np.stack([starts[filled], ends[filled]], axis=1))
            continue
        before = np.concatenate([[in_run], filled[:-1]])
        opened = list(starts[filled & ~before])
        closed = [ends[i - 1] if i > 0 else last_end for i in np.flatnonzero(~filled & before)]
        opened = ([run_start] if in_run else []) + opened
        in_run = bool(filled[-1])
        if in_run:
            run_start = opened.pop()
        out.append(np.array([opened, closed], np.int64).reshape(2, -1).T)
        last_end = int(ends[-1])
    if paragraphs and in_run:
        out.append(np.array([[run_start, last_end]], np.int64))
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), np.int64)


def _lines(path: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(starts, ends) byte offsets of a file's lines, a chunk at a time; ends drop the \\n and a \\r."""
    offset, tail = 0, b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            buf = tail + chunk
            base = offset - len(tail)
            offset += len(chunk)
            arr = np.frombuffer(buf, np.uint8)
            newlines = np.flatnonzero(arr == 10)
            if not len(newlines):
                tail = buf
                continue
            starts = np.concatenate([[0], newlines[:-1] + 1])
            ends = newlines - ((newlines > starts) & (arr[np.maximum(newlines - 1, 0)] == 13))
            tail = buf[int(newlines[-1]) + 1:]
            blank = _blank_lines(arr, starts, ends)
            yield starts + base, np.where(blank, starts, ends) + base
    if tail.strip():
        yield np.array([offset - len(tail)]), np.array([offset - (tail.endswith(b"\r"))])


_WHITESPACE = np.zeros(256, bool)
_WHITESPACE[[9, 10, 11, 12, 13, 32]] = True


def _blank_lines(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, short: int = 16) -> np.ndarray:
    """Which lines are empty or whitespace only (checked for lines of up to `short` bytes; longer ones
    are taken as text, which a whitespace-only line of that length almost never is)."""
    blank = ends <= starts
    check = np.flatnonzero(~blank & (ends - starts <= short))
    if len(check):
        at = starts[check, None] + np.arange(short)[None]
        inside = at < ends[check, None]
        blank[check] = (_WHITESPACE[buf[np.minimum(at, len(buf) - 1)]] | ~inside).all(axis=1)
    return blank


def parse_json_record(line: str, where: str) -> Record:
    """A record from one JSON object; a blank line is an empty record (DataError if malformed)."""
    if not line.strip():
        return {"text": ""}
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where} is not valid JSON ({err.msg})") from None
    if isinstance(obj, dict) and isinstance(obj.get("text"), str):
        out = {"text": obj["text"]}
        if isinstance(obj.get("text_pair"), str):
            out["text_pair"] = obj["text_pair"]
        if "label" in obj:
            out["label"] = str(obj["label"])
        return out
    if isinstance(obj, dict) and isinstance(obj.get("input"), str) and isinstance(obj.get("target"), str):
        return {"input": obj["input"], "target": obj["target"]}
    raise DataError(f"{where} needs a string field 'text', or 'input' and 'target'")


class ArrayRecords:
    """Records of ArrayRecord files: each a UTF-8 JSON record, or plain text."""

    def __init__(self, paths: list[str]):
        from array_record.python import array_record_data_source  # comes with grain
        self.paths = paths
        try:
            self._source = array_record_data_source.ArrayRecordDataSource(paths)
        except Exception as err:  # the C++ reader raises plain RuntimeErrors for unreadable files
            raise DataError(f"cannot read ArrayRecord files {paths[0]}...: {str(err).splitlines()[0][:200]}") from None

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Record:
        raw = self._source[index]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"ArrayRecord record {index} is not UTF-8 text") from None
        if text.lstrip().startswith("{"):
            return parse_json_record(text, f"ArrayRecord record {index}")
        return {"text": text}
