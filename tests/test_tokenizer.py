"""Tests of zoo.tokenizer: exact round trip, deterministic training, save/load, T5 sentinels, the CLI."""

import dataclasses
import functools
import json
import os

import pytest

import models
from zoo import corpus, sources, tokenizer_cli
from zoo.tokenizer import Tokenizer, train_on_sample

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
    with pytest.raises(ValueError, match="vocab size 100 is too small: this text needs at least 3"):
        Tokenizer.train(small_corpus()[:5], 100)


# ---- training on a bounded sample, BPE, and the command line --------------------------------------


def write_jsonl(path, megabytes: float) -> str:
    """A jsonl file of about `megabytes` MB of distinct records; returns its `text:` spec."""
    docs = small_corpus()
    with open(path, "w") as f:
        size, i = 0, 0
        while size < megabytes * 1e6:
            line = json.dumps({"text": f"{i} {docs[i % len(docs)]}"}) + "\n"
            f.write(line)
            size, i = size + len(line), i + 1
    return f"text:{path}"


def test_training_reads_a_bounded_seeded_sample(tmp_path, monkeypatch):
    small, large = write_jsonl(tmp_path / "small.jsonl", 1), write_jsonl(tmp_path / "large.jsonl", 10)
    read = []
    fetch = sources.TextFiles.__getitem__

    def counted(self, index):
        record = fetch(self, index)
        read.append(len(record["text"]))
        return record

    monkeypatch.setattr(sources.TextFiles, "__getitem__", counted)

    def chars_read(spec, seed=0):
        read.clear()
        tok = train_on_sample(spec, 400, sample_chars=30_000, seed=seed)
        return sum(read), tok

    small_chars, _ = chars_read(small)
    large_chars, tok = chars_read(large)
    # One record past the bound, plus open_source's check of the first and last records.
    slack = 3 * (max(len(d) for d in small_corpus()) + 10)
    assert 30_000 <= small_chars < 30_000 + slack and 30_000 <= large_chars < 30_000 + slack
    assert chars_read(large)[1].to_bytes() == tok.to_bytes()
    assert chars_read(large, seed=1)[1].to_bytes() != tok.to_bytes()


def test_bpe_has_the_exact_vocab_size_sentinels_and_round_trips():
    for texts, vocab_size in [(small_corpus(), 1000), (small_corpus()[:2], 900)]:  # the second is padded
        tok = Tokenizer.train(texts, vocab_size, model_type="bpe", sentinels=10)
        assert tok.vocab_size == vocab_size and tok.num_sentinels == 10 and tok.sentinel_id(0) == vocab_size - 1
        assert tok != Tokenizer.train(texts, vocab_size, model_type="unigram", sentinels=10)
        assert [tok.decode(tok.encode(t)) for t in TRICKY] == TRICKY
        assert tok.encode("<extra_id_0>")[-1] == vocab_size - 1  # after the dummy-prefix piece
        assert max(tok.encode(" ".join(texts[:20]))) < vocab_size - 10  # no unused or sentinel ids from text


def test_unknown_model_type_is_refused():
    with pytest.raises(ValueError, match="tokenizer type must be one of unigram, bpe"):
        Tokenizer.train(small_corpus()[:5], 500, model_type="word")


def test_cli_writes_the_model_train_py_then_uses(tmp_path, capsys):
    import train as train_script

    out = tmp_path / "spm.model"
    assert tokenizer_cli.main(["--data", "builtin", "--vocab-size", "400", "--type", "bpe", "--family", "gpt",
                               "--model", "gpt-tiny", "--sample-chars", "100000", "--out", str(out)]) == 0
    assert f"--set data.tokenizer={out}" in capsys.readouterr().out
    umask = os.umask(0)
    os.umask(umask)
    assert Tokenizer.from_file(out).vocab_size == 400 and out.stat().st_mode & 0o777 == 0o644 & ~umask
    workdir = tmp_path / "run"
    train_script.main(["--model", "gpt-tiny", "--workdir", str(workdir), "--steps", "1", "--seq-len", "16",
                       "--batch-size", "8", "--set", f"data.tokenizer={out}", "--set", "model.num_layers=1",
                       "--set", "model.d_model=32", "--set", "model.num_heads=2", "--set", "model.d_ff=64",
                       "--set", "train.sample_tokens=0", "--set", "train.eval_batches=1"])
    assert (workdir / "tokenizer.model").read_bytes() == out.read_bytes()


def test_cli_reserves_the_families_ids(tmp_path):
    out = tmp_path / "t5.model"
    assert tokenizer_cli.main(["--data", "builtin", "--vocab-size", "500", "--model", "t5-tiny",
                               "--sample-chars", "20000", "--out", str(out)]) == 0
    assert Tokenizer.from_file(out).num_sentinels == 100


@pytest.mark.parametrize("flags, message", [
    (["--data", "text:{tmp}/missing/*.jsonl"], "no files match"),
    (["--vocab-size", "100"], "is too small: this text needs at least"),
    (["--vocab-size", "0"], "--vocab-size must be >= 1"),
    (["--sentinels", "3", "--family", "t5"], "either --sentinels or --family/--model"),
    (["--family", "gpt", "--model", "t5-tiny"], "is a t5 preset, not gpt"),
    (["--out", "{tmp}/nodir/x.model"], "does not exist"),
])
def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys, flags, message):
    out = str(tmp_path / "x.model")
    args = {"--data": "builtin", "--vocab-size": "400", "--sample-chars": "20000", "--out": out}
    flags = [f.format(tmp=tmp_path) for f in flags]
    args.update(zip(flags[::2], flags[1::2]))
    with pytest.raises(SystemExit) as exit_info:
        tokenizer_cli.main([x for kv in args.items() for x in kv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert os.listdir(tmp_path) == []


def test_run_tokenizer_refuses_a_given_model_without_the_sentinels_it_needs(tmp_path):
    from zoo import workdir as workdir_lib

    path = tmp_path / "few.model"
    trained(sentinels=10).save(path)
    cfg = models.run_config("t5-tiny")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=str(path)))
    with pytest.raises(ValueError, match="has 10 sentinels .* reserves 100; train it with python -m zoo.tokenizer"):
        workdir_lib.run_tokenizer(str(tmp_path / "run"), cfg, 100)
    assert workdir_lib.run_tokenizer(None, cfg, 10) == trained(sentinels=10)
