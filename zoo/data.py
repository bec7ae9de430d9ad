"""Records -> rows -> batches: a grain pipeline whose memory and start-up time do not grow with the data.

Slots. Row r of every global batch (slot r, r < batch_size) is cut from its own stream of
documents: the ones at positions r, r + B, r + 2B, ... of the document order (a grain index shuffle,
reseeded every epoch, for training; the source order for evaluation). A family's `RowMaker` turns
documents into units (tokenized text, pairs or whole rows) and cuts a slot's units into rows
(packing with segment ids, pairs side by side, or one row per unit). A slot's read position is a
`Cursor` of three integers, so

- a batch depends only on the slots' cursors, not on which process reads which slot: a process
  reads the slots of its rows of the global batch, and a run resumed on another number of
  processes (or of worker processes) sees the same global batches;
- the data state in a checkpoint is `DataState`: the batches consumed and every slot's cursor.

Noise (MLM masking, span corruption, prefix splits) is drawn per row from a generator seeded by
(seed, step, slot): the global example, whichever process makes it. Rows are finished (the family's
objective) in grain worker processes when `data.workers` > 0; a background thread places batches
on devices.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Any, Iterator, Sequence

import grain
import jax
import numpy as np

from zoo import sources
from zoo.errors import DataError
from zoo.rows import Cursor, Doc, RowMaker, Row

_META = ("slot", "step", "cursor", "real")  # keys the pipeline adds to each row, removed before the model


@dataclasses.dataclass
class DataState:
    """Where a split's pipeline is: batches consumed, and each slot's cursor ([batch_size, 3] int64)."""

    batches: int
    cursors: np.ndarray

    @classmethod
    def start(cls, batch_size: int) -> DataState:
        """The state before the first batch."""
        return cls(0, np.zeros((batch_size, 3), np.int64))

    def to_json(self) -> dict:
        """The state as JSON (saved in checkpoints)."""
        return {"batches": int(self.batches), "cursors": self.cursors.tolist()}

    @classmethod
    def from_json(cls, obj: dict, batch_size: int) -> DataState:
        """A state saved by `to_json`; DataError if it belongs to another batch size or an older format."""
        if "cursors" not in obj:
            raise DataError("the checkpoint's data position predates resumable pipelines; resume it with the "
                            "zoo version that wrote it, or start a new --workdir")
        cursors = np.asarray(obj["cursors"], np.int64).reshape(-1, 3)
        if len(cursors) != batch_size:
            raise DataError(f"the checkpoint was written with batch size {len(cursors)}; resume it with "
                            f"--batch-size {len(cursors)}")
        return cls(int(obj["batches"]), cursors)


class _SlotRows(grain.IterDataset):
    """The rows of some slots, in (step, slot) order; grain's worker slicing keeps every k-th slot."""

    def __init__(self, split: "Split", slots: np.ndarray, cursors: np.ndarray, step: int):
        super().__init__()
        self.split, self.slots, self.cursors, self.step = split, slots, cursors, step

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """Keep the slots of one worker (grain calls this in each worker process)."""
        del sequential_slice
        self.slots, self.cursors = self.slots[sl], self.cursors[sl]

    def __iter__(self) -> Iterator[Row]:
        return _SlotRowsIterator(self)

    def __str__(self) -> str:
        return f"SlotRows(slots={len(self.slots)})"


class _SlotRowsIterator(grain.DatasetIterator):
    def __init__(self, ds: _SlotRows):
        super().__init__()
        self.split, self.slots, self.step, self.k = ds.split, ds.slots, ds.step, 0
        self.cursors = [ds.split.cursor(int(s), c) for s, c in zip(ds.slots, ds.cursors)]

    def __next__(self) -> Row:
        slot, cursor = self.slots[self.k], self.cursors[self.k]
        row = self.split.maker.make_row(cursor)
        real = row is not None
        out = {**(row if real else self.split.maker.empty_row()), "slot": np.int64(slot), "step": np.int64(self.step),
               "cursor": np.asarray(cursor.state, np.int64), "real": np.bool_(real)}
        self.k += 1
        if self.k == len(self.slots):
            self.k, self.step = 0, self.step + 1
        return out

    def get_state(self) -> dict:
        return {"step": self.step, "k": self.k, "cursors": [c.state for c in self.cursors]}

    def set_state(self, state: dict) -> None:
        raise NotImplementedError("zoo restores pipelines from DataState, not grain state")


@dataclasses.dataclass(frozen=True)
class _Finish:
    """grain map: a row -> the family's model inputs, noise seeded by (seed, step, slot)."""

    maker: RowMaker
    seed: int

    def __call__(self, row: Row) -> Row:
        meta = {k: row[k] for k in _META}
        rng = np.random.default_rng([self.seed, int(meta["step"]), int(meta["slot"]), 0xF1])
        out = self.maker.finish({k: v for k, v in row.items() if k not in _META}, rng)
        if not meta["real"]:  # a slot that has run out contributes nothing
            out = {k: (np.zeros_like(v) if k.endswith("weights") else v) for k, v in out.items()}
        return {**out, **meta}


@dataclasses.dataclass(frozen=True)
class HostBatch:
    """This process's rows of one global batch: model inputs, and each row's slot, cursor after it and realness."""

    inputs: dict[str, np.ndarray]
    slots: np.ndarray
    cursors: np.ndarray
    real: np.ndarray


class Split:
    """One split of a source as batches for this process's rows (`local`) of a global batch.

    `shuffle`: training order (seeded index shuffle, reseeded each epoch, endless); otherwise the
    source order, once, with rows of exhausted slots padded with zero weight.
    """

    def __init__(self, source: sources.Source, maker: RowMaker, batch_size: int, seed: int, shuffle: bool,
                 local: slice | None = None, workers: int = 0):
        if len(source) == 0:
            raise DataError("the data split holds no records")
        self.source, self.maker, self.batch_size, self.seed, self.shuffle = source, maker, batch_size, seed, shuffle
        self.local = slice(0, batch_size) if local is None else local
        self.workers = workers
        order = grain.MapDataset.range(len(source))
        self.order = order.shuffle(seed=seed % 2**32).repeat() if shuffle else order

    def cursor(self, slot: int, state: Sequence[int]) -> Cursor:
        """Slot `slot`'s cursor at `state`."""
        return Cursor(self.order[slot::self.batch_size], self.units_of, state)

    def units_of(self, index: int) -> list:
        """The units of source record `index`."""
        return self.maker.units(self.source[index], Doc(index, self.seed, self.source))

    def batches(self, state: DataState | None = None) -> Iterator[HostBatch]:
        """This process's rows of batch `state.batches`, then the next ones, endlessly (padded past the end)."""
        state = DataState.start(self.batch_size) if state is None else state
        slots = np.arange(self.batch_size)[self.local]
        ds = _SlotRows(self, slots, state.cursors[self.local], state.batches).map(_Finish(self.maker, self.seed))
        workers = _workers(self.workers, len(slots))
        if workers:
            _absl_flags_parsed()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2))
        ds = ds.batch(len(slots))
        iterator = iter(ds)
        try:
            for batch in iterator:
                yield HostBatch({k: v for k, v in batch.items() if k not in _META}, batch["slot"], batch["cursor"],
                                batch["real"])
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()


def _absl_flags_parsed() -> None:
    """grain 0.2.18's worker start reads an absl flag, which fails unless flags count as parsed
    (google/grain#1355, fixed after that release); zoo's scripts use argparse, not absl.app."""
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _workers(requested: int, rows: int) -> int:
    """The most worker processes up to `requested` that divide this process's rows (grain interleaves them)."""
    return max((w for w in range(1, min(requested, rows) + 1) if rows % w == 0), default=0)


def global_cursors(batch: HostBatch, batch_size: int) -> np.ndarray:
    """Every slot's cursor after `batch` ([batch_size, 3]), gathered from all processes."""
    slots, cursors = batch.slots, batch.cursors
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        slots = np.asarray(multihost_utils.process_allgather(slots, tiled=True))
        cursors = np.asarray(multihost_utils.process_allgather(cursors, tiled=True))
    out = np.zeros((batch_size, 3), np.int64)
    out[slots] = cursors
    return out


def any_real(batch: HostBatch) -> bool:
    """Whether any process's rows of this batch hold data (the end of an evaluation pass is agreed on)."""
    real = np.asarray([bool(batch.real.any())])
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        real = np.asarray(multihost_utils.process_allgather(real))
    return bool(real.any())


def to_global(batch: dict[str, np.ndarray], shardings: dict[str, jax.sharding.NamedSharding]) -> dict[str, jax.Array]:
    """Assemble per-process numpy rows into global arrays on the batch sharding."""
    return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in batch.items()}


def prefetch(batches: Iterator[HostBatch], shardings: dict[str, jax.sharding.NamedSharding],
             depth: int = 2) -> Iterator[tuple[dict[str, jax.Array], HostBatch]]:
    """(device batch, host batch) pairs, made and placed on devices by a background thread.

    Close the generator (or let it run out) before the process exits: closing stops and joins
    the thread, which must not be inside a device transfer when the interpreter shuts down.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            try:
                host = next(batches)
                item: Any = (to_global(host.inputs, shardings), host)
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
        close = getattr(batches, "close", None)
        if close is not None:
            close()
