"""Every TFDS dataset zoo maps, trained on by `train.py --data tfds:NAME`, from a locally built copy.

Each dataset is prepared on disk offline by TFDS's own builder (see `tfds_fixtures`), 24 training
and 8 validation examples of varied short text, and train.py's `main` runs in this process (the 8
emulated devices of conftest) with the family that fits: BERT classification (or regression, for
STS-B) for GLUE, GPT for C4, T5 seq2seq for translation, summaries and questions. The runs of one
model shape share a test, so that one xdist worker compiles that shape once, and its XLA programs
through a persistent compilation cache kept for this file.
"""

import json
import math
import os
import traceback

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

import jax  # noqa: E402
from jax.experimental.compilation_cache import compilation_cache  # noqa: E402

import tfds_fixtures as fx  # noqa: E402
import train as train_script  # noqa: E402
from zoo import sources  # noqa: E402
from zoo import workdir as workdir_lib  # noqa: E402

WORDS = ("the quick brown fox jumps over a lazy dog while seven small birds sing near cold rivers "
         "and old trees grow under bright stars").split()
COUNTS = {"train": 24, "validation": 8, "validation_matched": 8, "validation_mismatched": 12,
          "test": 2, "test_matched": 2, "test_mismatched": 2}


def phrase(split: str, i: int) -> str:
    """Short text that differs from example to example: the split, the index and a few words."""
    return " ".join([split, str(i)] + [WORDS[(7 * i + 3 * k + len(split)) % len(WORDS)] for k in range(2 + i % 5)])


def local(cls: type) -> type:
    return fx.sized(cls, COUNTS, phrase)


BUILT = [(local(fx.Glue), config) for config in fx.GLUE] + [
    (local(fx.C4), "en"), (local(fx.Wmt14Translate), "de-en"), (local(fx.CnnDailymail), None),
    (local(fx.Xsum), None), (local(fx.Squad), "v1.1")]

TINY = ["--steps", "2", "--batch-size", "8", "--seq-len", "32", "--set", "model.num_layers=1",
        "--set", "model.d_model=32", "--set", "model.d_ff=64", "--set", "data.vocab_size=400",
        "--set", "train.eval_batches=2", "--set", "train.sample_tokens=0", "--set", "train.checkpoint_every=2"]
BERT = ["--model", "bert-tiny", "--set", "model.task=classify", "--set", "model.dropout=0"]  # 2 heads of 16
GPT = ["--model", "gpt-tiny", "--set", "model.num_heads=2"]
T5 = ["--model", "t5-tiny", "--set", "model.objective=seq2seq", "--set", "model.num_heads=2",
      "--set", "model.head_dim=16", "--set", "model.num_decoder_layers=1", "--set", "model.num_sentinels=8"]

BINARY = [config for config in fx.GLUE if config not in ("mnli", "stsb")]
SEQ2SEQ = {  # dataset: how the inputs of its records begin
    "wmt14_translate/de-en": "translate German to English: hallo ",
    "wmt14_translate/en-de": "translate English to German: hello ",
    "cnn_dailymail": "summarize: article ", "xsum": "summarize: document ", "squad": "question: question "}


@pytest.fixture(scope="module", autouse=True)
def quick_compilation(tmp_path_factory):
    """XLA programs built fast (without most optimisations: half the compile time of these tiny
    models) and kept in a persistent cache that every run of one model shape reads (each run builds
    fresh jitted steps); JAX's settings come back after this file."""
    settings = {"jax_compilation_cache_dir": str(tmp_path_factory.mktemp("xla")),
                "jax_persistent_cache_min_compile_time_secs": 0.0,
                "jax_persistent_cache_min_entry_size_bytes": 0,
                "jax_disable_most_optimizations": True}
    before = {name: jax.config.values[name] for name in settings}
    for name, value in settings.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()  # the cache is set up once per process: again, with these settings
    yield
    for name, value in before.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A TFDS data directory holding every dataset of BUILT, as ArrayRecord files."""
    root = tmp_path_factory.mktemp("tfds")
    fx.prepare(root, BUILT)
    return root


@pytest.fixture
def data_dir(prepared, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(prepared))
    return prepared


@pytest.fixture
def run(data_dir, tmp_path, capsys, monkeypatch):
    """`run(name, family, *flags)`: train.py on `tfds:name` in this process, a fresh workdir each time.

    It returns the metrics of the run's closing `validation:` report, and the first record of each
    split the run read, after checking it read the train split and `eval_split` of `tfds:name` only.
    """
    opened = []
    open_source = sources.open_source

    def spy(spec, split, *args, **kwargs):
        source = open_source(spec, split, *args, **kwargs)
        opened.append((spec, split, source[0]))
        return source

    monkeypatch.setattr(sources, "open_source", spy)

    def run(name: str, family: list[str], *flags: str, eval_split: str = "validation") -> tuple[dict, dict]:
        opened.clear()
        capsys.readouterr()  # nothing of an earlier run
        workdir = str(tmp_path / name.replace("/", "_") / eval_split)
        argv = ["--workdir", workdir, "--data", f"tfds:{name}", *family, *TINY, *flags]
        if eval_split != "validation":
            argv += ["--set", f"data.eval_split={eval_split}"]
        try:
            assert train_script.main(argv) == 0
        except SystemExit as stop:
            raise AssertionError(f"train.py exited {stop.code}: {capsys.readouterr().err.strip()[-1000:]}") from None
        out = capsys.readouterr().out
        reports = [line for line in out.splitlines() if line.startswith("validation: ")]
        assert len(reports) == 1, out
        with open(os.path.join(workdir, workdir_lib.METRICS_FILE)) as f:
            logged = [json.loads(line) for line in f]
        assert logged[-1]["step"] == 2 and math.isfinite(logged[-1]["loss"]), logged
        firsts = {split: record for _, split, record in opened}
        assert {spec for spec, _, _ in opened} == {f"tfds:{name}"} and set(firsts) == {"train", eval_split}, opened
        return parse_report(reports[0]), firsts

    return run


def parse_report(line: str) -> dict:
    """`validation: loss 0.69, tokens 8, preset bert-tiny` -> {"loss": 0.69, "tokens": 8.0, "preset": "bert-tiny"}."""
    out = {}
    for item in line.removeprefix("validation: ").split(", "):
        key, _, value = item.partition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            out[key] = value
    return out


def each(names, check) -> None:
    """`check(name)` for every name, all of them even when some fail; then one failure naming them all.

    Runs of one model shape share a test (and so an xdist worker), which compiles that shape once.
    """
    failures = []
    for name in names:
        try:
            check(name)
        except Exception as err:
            where = traceback.extract_tb(err.__traceback__)[-1]
            failures.append(f"{name}: {type(err).__name__}: {str(err).strip()[:2000]} "
                            f"({os.path.basename(where.filename)}:{where.lineno})")
    assert not failures, "\n".join(failures)


def check_classification(report: dict, eval_examples: int) -> None:
    assert report["preset"] == "bert-tiny" and report["vocab_size"] == 400, report
    assert report["tokens"] == eval_examples, report  # one per example: the whole evaluation split
    assert math.isfinite(report["loss"]), report
    assert 0.0 <= report["accuracy"] <= 1.0 and 0.0 <= report["f1"] <= 1.0, report


def test_glue_binary_tasks_train_bert_to_classify(run):
    def check(config):
        report, firsts = run(f"glue/{config}", BERT, "--set", "model.num_labels=2")
        check_classification(report, COUNTS["validation"])
        first = firsts["train"]
        assert first["text"].startswith(f"{config} train ") and first["label"] in ("0", "1"), first
        assert ("text_pair" in first) == (fx.GLUE[config][1] is not None), first

    each(BINARY, check)


def test_mnli_trains_bert_on_three_classes_and_evaluates_the_split_named(run):
    def check(eval_split):
        report, firsts = run("glue/mnli", BERT, "--set", "model.num_labels=3", eval_split=eval_split)
        read = {"validation": "validation_matched"}.get(eval_split, eval_split)  # GLUE's headline half
        check_classification(report, COUNTS[read])  # 8 matched, 12 mismatched examples
        first = firsts[eval_split]
        assert first["text"].startswith(f"mnli {read} ") and "text_pair" in first, first

    each(["validation", "validation_mismatched"], check)


def test_stsb_trains_bert_to_regress_the_score(run):
    report, firsts = run("glue/stsb", BERT, "--set", "model.num_labels=1")
    assert report["tokens"] == COUNTS["validation"] and math.isfinite(report["loss"]), report
    assert -1.0 <= report["pearson"] <= 1.0, report
    assert float(firsts["train"]["label"]) in fx.STSB_SCORES, firsts


def test_c4_trains_gpt(run):
    report, firsts = run("c4/en", GPT)
    assert report["preset"] == "gpt-tiny" and report["tokens"] > 0, report
    assert math.isfinite(report["loss"]) and 0.0 <= report["accuracy"] <= 1.0, report
    assert firsts["train"]["text"].startswith("web page train "), firsts


def test_text_to_text_datasets_train_t5_seq2seq(run):
    def check(name):
        report, firsts = run(name, T5)
        assert report["preset"] == "t5-tiny" and report["tokens"] > 0 and math.isfinite(report["loss"]), report
        assert report["generated"] == COUNTS["validation"], report  # every validation record, decoded
        for key in ("exact_match", "bleu", "rouge_l"):
            assert math.isfinite(report[key]), report
        first = firsts["train"]
        assert first["input"].startswith(SEQ2SEQ[name]) and first["target"], first

    each(SEQ2SEQ, check)


def test_an_unprepared_tfds_dataset_stops_train_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "empty"))
    workdir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train_script.main(["--workdir", str(workdir), "--data", "tfds:xsum", *T5, *TINY])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "TFDS dataset 'xsum'" in lines[0] and "is not prepared under" in lines[0], lines[0]
    assert "tfds build xsum --file_format=array_record" in lines[0], lines[0]
    assert not workdir.exists()
