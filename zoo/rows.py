"""The contract between a family's data side and the pipeline: documents -> units -> rows -> inputs.

A family's `RowMaker` turns one document into units (tokenized text, an input/target pair, or a
whole row), cuts rows from a `Cursor` over a stream of documents, and finishes a row into model
inputs with a generator the pipeline (`zoo.data`) seeds per global example. Everything here is
numpy and plain Python: importing it loads neither JAX nor grain.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from zoo import sources
from zoo.errors import DataError

Row = dict[str, np.ndarray]
EMPTY_DOCS_LIMIT = 10_000  # consecutive documents without a unit that mean the data makes no examples


@dataclasses.dataclass(frozen=True)
class Doc:
    """One document as a family's `units` sees it: its source index, and seeded access to others."""

    index: int
    seed: int
    source: sources.Source

    def rng(self, *tags: int) -> np.random.Generator:
        """A generator fixed by (seed, document, tags): the same draws whenever the document comes back."""
        return np.random.default_rng([self.seed, self.index, *tags])


@dataclasses.dataclass(frozen=True)
class RowMaker:
    """How one run's family turns documents into fixed-shape rows, and rows into model inputs."""

    units: Callable[[sources.Record, Doc], list]  # a document's units, in order (may be empty)
    make_row: Callable[["Cursor"], Row | None]  # the next row from a slot's cursor; None once it is exhausted
    finish: Callable[[Row, np.random.Generator], Row]  # a row -> the model's inputs (draws the objective's noise)
    empty_row: Callable[[], Row]  # a padding row (finished with zero weights where a slot has run out)


class Cursor:
    """A slot's read position: (document number within the slot, unit within it, token offset in the unit)."""

    def __init__(self, docs: Sequence[int], units_of: Callable[[int], list], state: Sequence[int] = (0, 0, 0)):
        self._docs, self._units_of = docs, units_of
        self.doc, self.unit, self.offset = (int(x) for x in state)
        self._units: list | None = None
        self._empty = 0

    @property
    def state(self) -> tuple[int, int, int]:
        """The position as three integers (what a checkpoint stores)."""
        return self.doc, self.unit, self.offset

    def current(self) -> Any | None:
        """The unit at the position (skipping documents without units), or None past the last document."""
        while True:
            if self.doc >= len(self._docs):
                return None
            if self._units is None:
                self._units = self._units_of(int(self._docs[self.doc]))
            if self.unit < len(self._units):
                self._empty = 0
                return self._units[self.unit]
            self._empty += self.unit == 0
            if self._empty > EMPTY_DOCS_LIMIT:
                raise DataError(f"{EMPTY_DOCS_LIMIT} documents in a row made no examples for this run; check "
                                f"the data source and the task (model.task / model.objective)")
            self.doc, self.unit, self.offset, self._units = self.doc + 1, 0, 0, None

    def next_unit(self) -> None:
        """Move past the current unit."""
        self.unit, self.offset = self.unit + 1, 0


def take_tokens(cursor: Cursor, count: int) -> list[np.ndarray]:
    """Up to `count` tokens from the cursor's units, as one piece per unit touched (in order)."""
    pieces, have = [], 0
    while have < count:
        unit = cursor.current()
        if unit is None:
            break
        piece = unit[cursor.offset:cursor.offset + count - have]
        pieces.append(piece)
        have += len(piece)
        cursor.offset += len(piece)
        if cursor.offset >= len(unit):
            cursor.next_unit()
    return pieces


def rows_of(records: list[sources.Record], maker: RowMaker, seed: int = 0) -> list[Row]:
    """Every row one slot cuts from `records` in order, unfinished (for tests and inspection)."""
    source = sources.RecordList(records)
    cursor = Cursor(range(len(source)), lambda i: maker.units(source[i], Doc(i, seed, source)))
    out = []
    while (row := maker.make_row(cursor)) is not None:
        out.append(row)
    return out


def stack(rows: list[Row]) -> Row:
    """Rows stacked into arrays with a leading batch axis."""
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
