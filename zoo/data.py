"""Text sources -> tokenizer -> family examples -> deterministic, resumable, sharded batches.

Sources: `builtin` (the embedded corpus of `zoo.corpus`), `text:GLOB` (local .txt files, one
document each, or .jsonl files with a `text` field, or `input`/`target` for text-to-text tasks),
and `tfds:NAME` (read with `tfds.data_source`, which needs no TensorFlow).

Batch `i` is a pure function of (examples, seed, i): rows are permuted once per epoch with a seed
derived from (seed, epoch). The data position saved in a checkpoint is therefore just the number of
batches consumed, and resuming is exact. Each process materialises only its own rows of the
global batch.
"""

from __future__ import annotations

import glob
import json
import os
import queue
import threading
from typing import Any, Callable, Iterator

import jax
import numpy as np

from zoo import corpus
from zoo.errors import ZooError

Examples = dict[str, np.ndarray]


class DataError(ZooError, ValueError):
    """Data that cannot be found or read."""


def load_records(source: str, split: str, valid_fraction: float = 0.02, seed: int = 0) -> list[dict[str, str]]:
    """Records ({"text": ...} or {"input": ..., "target": ...}) of one split of a source."""
    if split not in ("train", "validation"):
        raise DataError(f"unknown split {split!r}; use train or validation")
    if source == "builtin":
        return [{"text": t} for t in corpus.builtin_split(split)]
    if source.startswith("text:"):
        records = _read_text_files(source[len("text:"):])
        return _split_records(records, split, valid_fraction, seed)
    if source.startswith("tfds:"):
        return _read_tfds(source[len("tfds:"):], split)
    raise DataError(f"unknown data source {source!r}; use builtin, text:GLOB or tfds:NAME")


def record_text(record: dict[str, str]) -> str:
    """A record's text for language modelling: `text`, or `input` and `target` joined by a space."""
    return record["text"] if "text" in record else record.get("input", "") + " " + record.get("target", "")


def record_texts(records: list[dict[str, str]]) -> list[str]:
    """Every string of every record but labels (what a tokenizer is trained on)."""
    return [v for r in records for k, v in r.items() if k != "label"]


def _read_text_files(pattern: str) -> list[dict[str, str]]:
    """Every document of the files matching `pattern`, in sorted file order."""
    paths = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    if not paths:
        raise DataError(f"no files match {pattern!r}")
    records: list[dict[str, str]] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                if path.endswith(".jsonl"):
                    records += [_jsonl_record(line, path, n) for n, line in enumerate(f, 1) if line.strip()]
                else:
                    records.append({"text": f.read()})
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"cannot read {path}: {err}") from None
    records = [r for r in records if any(v.strip() for v in r.values())]
    if not records:
        raise DataError(f"the files matching {pattern!r} hold no text")
    return records


def _jsonl_record(line: str, path: str, number: int) -> dict[str, str]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{number} is not valid JSON ({err.msg})") from None
    if isinstance(obj, dict) and isinstance(obj.get("text"), str):  # an optional class label rides along
        return {"text": obj["text"], **({"label": str(obj["label"])} if "label" in obj else {})}
    if isinstance(obj, dict) and isinstance(obj.get("input"), str) and isinstance(obj.get("target"), str):
        return {"input": obj["input"], "target": obj["target"]}
    raise DataError(f"{path}:{number} needs a string field 'text', or 'input' and 'target'")


def _split_records(records: list[dict[str, str]], split: str, fraction: float, seed: int) -> list[dict[str, str]]:
    """Deterministic train/validation split of records that come without one."""
    keys = [json.dumps(r, sort_keys=True) for r in records]
    train, valid = corpus.split_documents(keys, valid_fraction=fraction, seed=seed)
    chosen = set(valid if split == "validation" else train)
    return [r for r, k in zip(records, keys) if k in chosen]


def _read_tfds(name: str, split: str) -> list[dict[str, str]]:
    """Records of a TFDS dataset read through ArrayRecord (data_dir from $TFDS_DATA_DIR)."""
    import tensorflow_datasets as tfds  # heavy import, only for users of tfds sources
    import tensorflow_datasets.text  # noqa: F401  (registers glue and the other text builders)

    tfds_split = {"train": "train", "validation": "validation"}[split]
    try:
        source = tfds.data_source(name, split=tfds_split, data_dir=os.environ.get("TFDS_DATA_DIR"),
                                  download=False)
    except Exception as err:  # tfds raises several types for a missing or unprepared dataset
        raise DataError(f"cannot open TFDS dataset {name!r} split {tfds_split!r}: "
                        f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    return [_tfds_record(source[i]) for i in range(len(source))]


def _tfds_record(example: dict[str, Any]) -> dict[str, str]:
    def text(v: Any) -> str:
        return v.decode("utf-8") if isinstance(v, bytes) else str(v)
    if "text" in example:
        return {"text": text(example["text"])}
    if "sentence" in example and "label" in example:  # GLUE-style classification
        return {"text": text(example["sentence"]), "label": str(int(example["label"]))}
    if "input" in example and "target" in example:
        return {"input": text(example["input"]), "target": text(example["target"])}
    raise DataError(f"TFDS examples with fields {sorted(example)} are not supported")


class Batches:
    """Deterministic batches over a table of examples, sliced for this process.

    `prepare(rows, rng)` turns the selected rows into model inputs (numpy); it receives a
    generator seeded by (seed, batch index) for objectives that draw noise (masking, spans).
    """

    def __init__(self, examples: Examples, batch_size: int, prepare: Callable[[Examples, np.random.Generator], dict],
                 seed: int = 0, shuffle: bool = True, local_rows: slice | None = None):
        self.examples = examples
        self.rows = len(next(iter(examples.values())))
        if self.rows < batch_size and shuffle:
            raise DataError(f"the data makes {self.rows} examples, fewer than one batch of {batch_size}; "
                            f"use more data or a smaller --batch-size")
        self.batch_size, self.prepare, self.seed, self.shuffle = batch_size, prepare, seed, shuffle
        self.local = slice(0, batch_size) if local_rows is None else local_rows  # this process's rows

    @property
    def batches_per_epoch(self) -> int:
        """Full batches in one pass (the remainder is dropped when shuffling, padded otherwise)."""
        return self.rows // self.batch_size if self.shuffle else -(-self.rows // self.batch_size)

    def row_indices(self, index: int) -> np.ndarray:
        """Global row ids of batch `index`."""
        epoch, offset = divmod(index, self.batches_per_epoch)
        order = np.arange(self.rows)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.rows)
        ids = order[offset * self.batch_size:(offset + 1) * self.batch_size]
        return np.pad(ids, (0, self.batch_size - len(ids)), constant_values=-1)  # -1: padding row

    def get(self, index: int) -> dict[str, np.ndarray]:
        """This process's rows of batch `index`, prepared as model inputs."""
        ids = self.row_indices(index)[self.local]
        rows = {k: v[np.maximum(ids, 0)] for k, v in self.examples.items()}
        batch = self.prepare(rows, np.random.default_rng([self.seed, index, 1]))
        if (ids < 0).any():  # padding rows of a final partial eval batch carry no weight
            batch = {k: (np.where(_expand(ids >= 0, v), v, 0) if k.endswith("weights") else v)
                     for k, v in batch.items()}
        return batch


def _expand(mask: np.ndarray, like: np.ndarray) -> np.ndarray:
    return mask.reshape(mask.shape + (1,) * (like.ndim - 1))


def to_global(batch: dict[str, np.ndarray], shardings: dict[str, jax.sharding.NamedSharding]) -> dict[str, jax.Array]:
    """Assemble per-process numpy rows into global arrays on the batch sharding."""
    return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in batch.items()}


def prefetch(batches: Batches, start: int, shardings: dict[str, jax.sharding.NamedSharding],
             depth: int = 2) -> Iterator[dict[str, jax.Array]]:
    """Batches `start`, `start+1`, ... prepared and placed on devices by a background thread.

    Close the generator (or let it run out) before the process exits: closing stops and joins
    the thread, which must not be inside a device transfer when the interpreter shuts down.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        index = start
        while not stop.is_set():
            try:
                item = to_global(batches.get(index), shardings)
            except Exception as err:  # surface host-side failures in the consumer
                item = err
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, Exception):
                return
            index += 1

    thread = threading.Thread(target=work, name="zoo-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
