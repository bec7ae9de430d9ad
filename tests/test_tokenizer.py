"""Tests of zoo.tokenizer: exact round trip, deterministic training, save/load, T5 sentinels."""

import functools

import pytest

from zoo import corpus
from zoo.tokenizer import Tokenizer

TRICKY = [
    "",
    " ",
    "\n",
    "plain English text.",
    "two  spaces,   three,\ttab\t\tand trailing  ",
    "  leading spaces\n\n\nblank lines\r\nCRLF\n",
    "    def indented(x):\n        return x  # code\n",
    "naïve café — “quotes” ß 日本語 Ελληνικά",
    "emoji via byte fallback: 😀🚀 \U0010ffff \x00\x07",
    "a <extra_id_0> b <extra_id_99> c",
]


@functools.cache
def small_corpus() -> tuple[str, ...]:
    """About the first 200 KB of the training split."""
    docs, size = [], 0
    for doc in corpus.builtin_split("train"):
        docs.append(doc)
        size += len(doc)
        if size > 200_000:
            break
    return tuple(docs)


@functools.cache
def trained(vocab_size: int = 1000, sentinels: int = 0, model_type: str = "unigram") -> Tokenizer:
    return Tokenizer.train(small_corpus(), vocab_size, model_type=model_type, sentinels=sentinels)


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_round_trip_is_exact(model_type):
    tok = trained(model_type=model_type)
    for text in TRICKY:
        assert tok.decode(tok.encode(text)) == text
    assert [tok.decode(ids) for ids in tok.encode_batch(TRICKY)] == TRICKY


def test_round_trip_of_validation_text_and_compression():
    tok = trained()
    text = "\n\n".join(corpus.builtin_split("validation")[:20])
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(text) / len(ids) > 2.5  # a sane subword vocabulary, not bytes
    assert tok.unk_id not in ids  # byte fallback covers everything


def test_ids_follow_t5_conventions():
    tok = trained()
    assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.bos_id) == (0, 1, 2, None)
    assert tok.vocab_size == 1000 and tok.num_sentinels == 0
    assert tok.decode([0, 0] + tok.encode("hi there") + [1, 0]) == "hi there"


def test_encode_batch_matches_encode():
    tok = trained()
    assert tok.encode_batch(TRICKY) == [tok.encode(t) for t in TRICKY]


def test_training_is_deterministic():
    texts = small_corpus()[:40]
    a = Tokenizer.train(texts, 600, sentinels=3)
    b = Tokenizer.train(list(texts), 600, sentinels=3)
    assert a.to_bytes() == b.to_bytes() and a == b


def test_save_and_load_restore_the_same_tokenizer(tmp_path):
    tok = trained(sentinels=10)
    path = tmp_path / "spm.model"
    tok.save(path)
    loaded = Tokenizer.from_file(path)
    assert loaded == tok and loaded.to_bytes() == tok.to_bytes()
    assert loaded.num_sentinels == 10 and loaded.vocab_size == 1000
    assert loaded.encode_batch(TRICKY) == tok.encode_batch(TRICKY)
    assert Tokenizer.from_bytes(tok.to_bytes()) == tok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spm.model"]  # one file, no leftovers


def test_sentinels_sit_at_the_top_like_t5():
    tok = trained(sentinels=10)
    assert tok.vocab_size == 1000 and tok.num_sentinels == 10
    assert tok.sentinel_id(0) == tok.vocab_size - 1
    assert tok.sentinel_id(9) == tok.vocab_size - 10
    assert [tok.decode([tok.sentinel_id(k)]) for k in (0, 9)] == ["<extra_id_0>", "<extra_id_9>"]
    ids = tok.encode("a <extra_id_0> b<extra_id_9>")
    assert tok.sentinel_id(0) in ids and tok.sentinel_id(9) in ids
    assert max(tok.encode(small_corpus()[0])) < tok.vocab_size - 10  # text never yields sentinels
    with pytest.raises(ValueError, match="sentinel 10 out of range"):
        tok.sentinel_id(10)


def test_sentinel_tokenizer_round_trips_and_pads_short_vocab():
    # 3 KB of text cannot support 900 pieces: the gap is filled with unused ids, never emitted.
    tok = Tokenizer.train(small_corpus()[:2], 900, sentinels=5)
    assert tok.vocab_size == 900 and tok.sentinel_id(0) == 899
    for text in TRICKY:
        assert tok.decode(tok.encode(text)) == text
    assert max(tok.encode(" ".join(small_corpus()[:2]))) < tok.vocab_size - 5


def test_extra_ids_are_appended_above_an_existing_model():
    base = trained()
    t5_like = Tokenizer.from_bytes(base.to_bytes(), extra_ids=100)
    assert t5_like.vocab_size == base.vocab_size + 100
    assert t5_like.sentinel_id(0) == base.vocab_size + 99
    assert t5_like.sentinel_id(99) == base.vocab_size
    assert t5_like.encode("plain text") == base.encode("plain text")
    with pytest.raises(ValueError, match="already has sentinels"):
        Tokenizer.from_bytes(t5_like.to_bytes(), extra_ids=100)


def test_corrupt_or_missing_file_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.model"
    for content in [b"", b"this is not a sentencepiece model", bytes(range(256))]:
        bad.write_bytes(content)
        with pytest.raises(ValueError, match=f"cannot read tokenizer {bad}: ") as info:
            Tokenizer.from_file(bad)
        assert "\n" not in str(info.value)
    missing = tmp_path / "missing.model"
    with pytest.raises(ValueError, match=f"cannot read tokenizer {missing}: No such file"):
        Tokenizer.from_file(missing)


def test_decode_rejects_out_of_range_ids():
    tok = trained()
    with pytest.raises(ValueError, match="token id 1000 is outside"):
        tok.decode([5, 1000])


def test_bad_training_arguments_are_clear():
    with pytest.raises(ValueError, match="no text"):
        Tokenizer.train(["", ""], 500)
    with pytest.raises(TypeError, match="not one str"):
        Tokenizer.train("a single string", 500)
    with pytest.raises(ValueError, match="Vocabulary size is smaller"):
        Tokenizer.train(small_corpus()[:5], 100)
