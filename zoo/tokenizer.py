"""SentencePiece tokenizer with T5's id conventions: pad=0, eos=1, unk=2, no bos, sentinels on top.

A `Tokenizer` is one SentencePiece model proto, nothing else: everything it knows — including its
T5-style sentinels `<extra_id_0>` (the highest id) ... `<extra_id_{n-1}>` — lives in the `.model`
bytes, so `save` writes one standard file that `sentencepiece` (or Hugging Face's `T5Tokenizer` with
`extra_ids=0`) reads back unchanged.

Tokenizers trained here round-trip text exactly, `decode(encode(s)) == s`: identity normalization,
no whitespace collapsing, and byte fallback for characters outside the vocabulary. The one exception
is SentencePiece's own whitespace marker U+2581 '▁', which decodes as a space.

Sentinels are appended to the trained model as USER_DEFINED pieces, so `encode` maps the literal
text `<extra_id_k>` to its id and `decode` maps the id back to that text, as in T5. If the corpus
cannot support the requested size (`hard_vocab_limit=False` lets small corpora train), the gap is
filled with UNUSED pieces that `encode` never emits, so `vocab_size` is always what was asked for.

`train_on_sample` is what a run trains when it is given no tokenizer: a bounded, seeded sample of a
source's train split, so the cost does not grow with the data. `python -m zoo.tokenizer` does the same
once for a pod (see `zoo.tokenizer_cli`).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import struct
from collections.abc import Iterable, Iterator, Sequence

import sentencepiece as spm

from zoo import sources
from zoo.errors import ZooValueError


class TokenizerError(ZooValueError):
    """A tokenizer that cannot be trained, read or asked for an id it does not have."""


PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
MODEL_TYPES = ("unigram", "bpe")

# SentencePiece skips training sentences longer than this many bytes; we cut documents below it.
MAX_SENTENCE_BYTES = 4192

# Piece types of sentencepiece_model.proto's ModelProto.SentencePiece.Type.
_USER_DEFINED, _UNUSED = 4, 5

_TRAINER_OPTIONS = dict(
    pad_id=PAD_ID,
    eos_id=EOS_ID,
    unk_id=UNK_ID,
    bos_id=-1,
    byte_fallback=True,
    # Identity normalization and no whitespace collapsing give an exact round trip.
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True,
    character_coverage=0.9995,
    hard_vocab_limit=False,
    input_sentence_size=0,  # 0 = keep every sentence (no sampling, hence no randomness)
    max_sentence_length=MAX_SENTENCE_BYTES,
    # More threads give (slightly) different model bytes; one thread is reproducible.
    num_threads=1,
    minloglevel=2,
)


class Tokenizer:
    """A SentencePiece model plus T5-style sentinel ids at the top of the vocabulary."""

    def __init__(self, processor: spm.SentencePieceProcessor):
        self._sp = processor
        self._num_sentinels = _count_sentinels(processor)

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        *,
        model_type: str = "unigram",
        sentinels: int = 0,
    ) -> Tokenizer:
        """Train a tokenizer of exactly `vocab_size` ids, the top `sentinels` being `<extra_id_k>`."""
        if isinstance(texts, str):
            raise TypeError("Tokenizer.train takes an iterable of texts, not one str")
        if sentinels < 0 or vocab_size <= sentinels:
            raise TokenizerError(f"need 0 <= sentinels < vocab_size, got {sentinels=} {vocab_size=}")
        if model_type not in MODEL_TYPES:
            raise TokenizerError(f"tokenizer type must be one of {', '.join(MODEL_TYPES)}, not {model_type!r}")
        sentences = (s for text in texts for s in _training_sentences(text))
        first = next(sentences, None)
        if first is None:
            raise TokenizerError("cannot train tokenizer: no text given")
        model = _train_model(itertools.chain([first], sentences), vocab_size, sentinels, model_type)
        padding = vocab_size - sentinels - _processor(model).vocab_size()
        extra = _pieces([f"<unused_{i}>" for i in range(padding)], _UNUSED)
        extra += _pieces(_sentinel_names(sentinels), _USER_DEFINED)
        return cls(_processor(model + extra))

    @classmethod
    def from_bytes(cls, model: bytes, extra_ids: int = 0) -> Tokenizer:
        """Load a serialized SentencePiece model, appending `extra_ids` sentinels above its vocab."""
        return cls(_load(model, extra_ids, "cannot read tokenizer"))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], extra_ids: int = 0) -> Tokenizer:
        """Load a `.model` file; `extra_ids=100` adds T5's sentinels to T5's own `spiece.model`."""
        try:
            with open(path, "rb") as f:
                model = f.read()
        except OSError as e:
            raise TokenizerError(f"cannot read tokenizer {path}: {e.strerror or e}") from None
        return cls(_load(model, extra_ids, f"cannot read tokenizer {path}"))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the `.model` bytes (sentinels included) to `path`, atomically; TokenizerError if it cannot."""
        tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
        try:
            # 0o644 (less the umask), not tempfile's 0o600: other users and hosts read a shared model.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(self.to_bytes())
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise TokenizerError(f"cannot write tokenizer {path}: {e.strerror or e}") from None

    def to_bytes(self) -> bytes:
        """Return the serialized SentencePiece model proto (sentinels included)."""
        return self._sp.serialized_model_proto()

    # ---- encoding -----------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Return the token ids of `text`, with no eos appended."""
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Return the token ids of each text (one multithreaded SentencePiece call)."""
        return self._sp.encode(list(texts))

    def decode(self, ids: Iterable[int]) -> str:
        """Return the text of `ids`; pad and eos decode to nothing, sentinels to `<extra_id_k>`."""
        pad = self._sp.pad_id()
        pieces = [int(i) for i in ids if i != pad]
        try:
            return self._sp.decode(pieces)
        except IndexError:
            bad = next(i for i in pieces if not 0 <= i < self.vocab_size)
            raise TokenizerError(f"token id {bad} is outside the vocabulary [0, {self.vocab_size})") from None

    # ---- vocabulary ---------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, sentinels included."""
        return self._sp.vocab_size()

    @property
    def pad_id(self) -> int:
        """Id of padding (0 in zoo tokenizers; -1 if a loaded model has none)."""
        return self._sp.pad_id()

    @property
    def eos_id(self) -> int:
        """Id of end of sequence (1 in zoo tokenizers; -1 if a loaded model has none)."""
        return self._sp.eos_id()

    @property
    def unk_id(self) -> int:
        """Id of unknown (2); rare with byte fallback."""
        return self._sp.unk_id()

    @property
    def bos_id(self) -> int | None:
        """Id of beginning of sequence, or None (T5 convention: none)."""
        bos = self._sp.bos_id()
        return None if bos < 0 else bos

    @property
    def num_sentinels(self) -> int:
        """Number of `<extra_id_k>` sentinels at the top of the vocabulary."""
        return self._num_sentinels

    def sentinel_id(self, k: int) -> int:
        """Id of `<extra_id_k>`: `vocab_size - 1 - k`, as in T5."""
        if not 0 <= k < self._num_sentinels:
            raise TokenizerError(f"sentinel {k} out of range: this tokenizer has {self._num_sentinels}")
        return self.vocab_size - 1 - k

    def id_to_piece(self, i: int) -> str:
        """Return the vocabulary piece of id `i` (for inspection)."""
        return self._sp.id_to_piece(i)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_bytes() == other.to_bytes()

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, sentinels={self._num_sentinels})"


def train_on_sample(
    spec: str,
    vocab_size: int,
    *,
    model_type: str = "unigram",
    sentinels: int = 0,
    sample_chars: int = 10_000_000,
    valid_fraction: float = 0.02,
    seed: int = 0,
) -> Tokenizer:
    """A tokenizer trained on about `sample_chars` characters of a source's train split, chosen by `seed`.

    The same arguments give the same model bytes, on any host, however large the source is.
    """
    source = sources.open_source(spec, "train", valid_fraction, seed)
    records = sources.sample(source, sample_chars, seed)
    texts = (text for record in records for text in sources.record_strings(record))
    return Tokenizer.train(texts, vocab_size, model_type=model_type, sentinels=sentinels)


# ---- helpers ------------------------------------------------------------------------------------


def _train_model(sentences: Iterator[str], vocab_size: int, sentinels: int, model_type: str) -> bytes:
    """The serialized SentencePiece model of `vocab_size - sentinels` pieces trained on `sentences`, read one
    at a time."""
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences,
            model_writer=writer,
            vocab_size=vocab_size - sentinels,
            model_type=model_type,
            **_TRAINER_OPTIONS,
        )
    except RuntimeError as e:
        raise TokenizerError(f"cannot train tokenizer: {_training_failure(e, vocab_size, sentinels)}") from None
    return writer.getvalue()


def _training_failure(error: RuntimeError, vocab_size: int, sentinels: int) -> str:
    """SentencePiece's complaint as one line, in our terms where we know it."""
    too_small = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(error))
    if not too_small:
        return _one_line(error)
    needed = int(too_small.group(1))
    reserved = f" ({needed} for its characters, bytes and specials, {sentinels} reserved)" if sentinels else ""
    return f"vocab size {vocab_size} is too small: this text needs at least {needed + sentinels}{reserved}"


def _training_sentences(text: str, max_bytes: int = MAX_SENTENCE_BYTES) -> Iterator[str]:
    """Cut `text` into runs of whole lines under `max_bytes`, keeping newlines so they are learned."""
    chunk: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        n = len(line.encode("utf-8"))
        if size + n > max_bytes and chunk:
            yield "".join(chunk)
            chunk, size = [], 0
        if n > max_bytes:
            yield from _cut(line, max_bytes)
        else:
            chunk.append(line)
            size += n
    if chunk:
        yield "".join(chunk)


def _cut(line: str, max_bytes: int) -> Iterator[str]:
    # A UTF-8 character is at most 4 bytes, so max_bytes // 4 characters always fit.
    step = max_bytes // 4
    for start in range(0, len(line), step):
        yield line[start : start + step]


def _sentinel_names(n: int) -> list[str]:
    # Appended in increasing id order, so <extra_id_0> ends up with the highest id.
    return [f"<extra_id_{k}>" for k in reversed(range(n))]


def _count_sentinels(processor: spm.SentencePieceProcessor) -> int:
    size = processor.vocab_size()
    k = 0
    while k < size and processor.id_to_piece(size - 1 - k) == f"<extra_id_{k}>":
        k += 1
    return k


def _load(model: bytes, extra_ids: int, what: str) -> spm.SentencePieceProcessor:
    try:
        processor = _processor(model)
    except RuntimeError as e:
        raise TokenizerError(f"{what}: not a SentencePiece model ({_one_line(e)})") from None
    if processor.vocab_size() == 0 or processor.unk_id() < 0:
        raise TokenizerError(f"{what}: not a SentencePiece model (empty vocabulary)")
    if extra_ids < 0:
        raise TokenizerError(f"{what}: extra_ids must be >= 0, got {extra_ids}")
    if extra_ids and _count_sentinels(processor):
        raise TokenizerError(f"{what}: it already has sentinels; load it with extra_ids=0")
    return _processor(model + _pieces(_sentinel_names(extra_ids), _USER_DEFINED))


def _processor(model: bytes) -> spm.SentencePieceProcessor:
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(model)
    return processor


def _pieces(names: list[str], piece_type: int) -> bytes:
    """Serialize `names` as ModelProto.pieces entries (field 1) of the given type, score 0.

    Protobuf concatenation appends to a repeated field, so `model + _pieces(...)` is the model with
    these pieces added at the end of its vocabulary. Hand-written to avoid a protobuf dependency.
    """
    out = b""
    for name in names:
        piece = _field(1, name.encode("utf-8")) + b"\x15" + struct.pack("<f", 0.0)  # 2: score
        piece += b"\x18" + _varint(piece_type)  # 3: type
        out += _field(1, piece)
    return out


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


if __name__ == "__main__":
    import importlib
    import sys

    # `python -m zoo.tokenizer` runs this file as __main__, so the command line (which imports models,
    # hence JAX) is loaded only here; a plain import would read as a cycle zoo.tokenizer <-> tokenizer_cli.
    sys.exit(importlib.import_module("zoo.tokenizer_cli").main())
