"""TFDS datasets by name: real datasets prepared on disk, offline, by TFDS's own builders.

The local builders of `tfds_fixtures` subclass the real TFDS builders (same name, configs, versions,
features) and replace only their downloads with a few examples; `download_and_prepare` writes
ArrayRecord files as `tfds build` would, and `zoo.datasets` reads them back through the registered
real code (or, for names TFDS has no code for, from the files alone).
"""

import pickle

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from tensorflow_datasets.datasets.squad import squad_dataset_builder  # noqa: E402
from tensorflow_datasets.text import glue  # noqa: E402

from tfds_fixtures import (  # noqa: E402
    C4, GLUE, N, STSB_SCORES, CnnDailymail, Glue, MyPairs, MyPixels, MyReviews, MySentences, MyTranslate, Squad,
    Wmt14Translate, WmtT2tTranslate, Xsum, prepare)
from zoo import datasets, sources  # noqa: E402
from zoo.errors import DataError  # noqa: E402


BUILT = [(Glue, config) for config in GLUE] + [
    (Glue, "mnli_mismatched"), (Wmt14Translate, "de-en"), (Wmt14Translate, "fr-en"), (WmtT2tTranslate, None),
    (CnnDailymail, None), (Xsum, None), (Squad, "v1.1"), (Squad, "v2.0"), (C4, "en"), (MySentences, None),
    (MyReviews, None), (MyPairs, None), (MyTranslate, None), (MyPixels, None)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A TFDS data directory holding every dataset of BUILT, as ArrayRecord files."""
    root = tmp_path_factory.mktemp("tfds")
    prepare(root, BUILT)
    return root


@pytest.fixture
def data_dir(prepared, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(prepared))
    return prepared


def records(name: str, split: str) -> list[dict]:
    """Every record of a split, sorted by text or input (ArrayRecord stores examples shuffled)."""
    source = datasets.open_tfds(name, split)
    return sorted((source[i] for i in range(len(source))), key=lambda r: tuple(r.values()))


def _glue_expected(config: str, split: str) -> list[dict]:
    a, b = GLUE[config]
    out = []
    for i in range(N):
        record = {"text": f"{config} {split} {i} {a}"}
        if b:
            record["text_pair"] = f"{config} {split} {i} {b}"
        if split.startswith("test"):
            record["label"] = "-1.0" if config == "stsb" else "-1"
        else:
            record["label"] = str(STSB_SCORES[i]) if config == "stsb" else str(i % (3 if config == "mnli" else 2))
        out.append(record)
    return out


@pytest.mark.parametrize("config", list(GLUE))
def test_glue_configs_map_to_segments_and_labels(data_dir, config):
    splits = ("train", "validation_matched", "test_matched") if config == "mnli" else ("train", "validation", "test")
    for split in splits:
        assert records(f"glue/{config}", split) == _glue_expected(config, split)


def test_mnli_validation_is_matched_and_other_splits_go_by_name(data_dir):
    assert records("glue/mnli", "validation") == _glue_expected("mnli", "validation_matched")
    mismatched = records("glue/mnli", "validation_mismatched")
    assert mismatched == _glue_expected("mnli", "validation_mismatched")
    assert records("glue/mnli_mismatched", "validation")[0]["text"].startswith("mnli_mismatched validation")
    assert len(datasets.open_tfds("glue/mnli", "train[:2]+validation_matched")) == 2 + N


def test_stsb_scores_are_float_strings_that_read_back_exactly(data_dir):
    labels = [r["label"] for r in records("glue/stsb", "train")]
    assert labels == ["0.0", "3.2", "4.75"]
    assert [np.float32(float(x)) for x in labels] == [np.float32(s) for s in STSB_SCORES]


@pytest.mark.parametrize("name, source, target", [
    ("wmt14_translate/de-en", "German", "English"), ("wmt14_translate/fr-en", "French", "English"),
    ("wmt_t2t_translate", "German", "English"), ("wmt14_translate/en-de", "English", "German")])
def test_translation_goes_the_way_the_config_says(data_dir, name, source, target):
    word = {"German": "hallo", "French": "bonjour", "English": "hello"}
    assert records(name, "validation") == [
        {"input": f"translate {source} to {target}: {word[source]} validation {i}",
         "target": f"{word[target]} validation {i}"} for i in range(N)]


def test_summaries_questions_and_web_text(data_dir):
    assert records("cnn_dailymail", "test") == [
        {"input": f"summarize: article test {i}", "target": f"highlight {i}.\nsecond {i}."} for i in range(N)]
    assert records("xsum", "train") == [{"input": f"summarize: document train {i}", "target": f"summary {i}"}
                                        for i in range(N)]
    assert records("squad/v1.1", "validation") == [
        {"input": f"question: question {i}? context: context validation {i}", "target": f"answer {i}"}
        for i in range(N)]
    assert [r["target"] for r in records("squad/v2.0", "train")] == ["unanswerable", "answer 1", "answer 2"]
    assert records("c4/en", "validation") == [{"text": f"web page validation {i}"} for i in range(N)]


def test_registered_code_reads_the_local_builders_files(data_dir):
    assert type(tfds.builder("glue/sst2", data_dir=str(data_dir))) is glue.Glue  # the real class, not ours
    assert type(tfds.builder("squad/v1.1", data_dir=str(data_dir))) is squad_dataset_builder.Builder
    assert isinstance(tfds.builder("my_pairs", data_dir=str(data_dir)), tfds.core.read_only_builder.ReadOnlyBuilder)


def test_datasets_without_tfds_code_map_by_their_fields(data_dir):
    assert records("my_sentences", "train") == [{"text": f"s train {i}", "label": str(i)} for i in range(N)]
    assert records("my_reviews", "validation") == [{"text": f"r validation {i}", "label": str(1 - i % 2)}
                                                   for i in range(N)]
    assert records("my_pairs", "train") == [{"input": f"in train {i}", "target": f"out {i}"} for i in range(N)]
    assert records("my_translate", "train") == [{"input": f"translate qq to English: qq train {i}",
                                                 "target": f"en train {i}"} for i in range(N)]


def test_sources_open_tfds_specs_and_the_source_pickles(data_dir):
    source = sources.open_source("tfds:glue/qnli", "validation")
    again = pickle.loads(pickle.dumps(source))  # what grain does to reach its worker processes
    assert [again[i] for i in range(len(again))] == [source[i] for i in range(len(source))]
    with pytest.raises(IndexError):
        source[len(source)]


@pytest.mark.parametrize("name, split, message", [
    ("glue/mnli", "dev", "has no split 'dev'; its splits: train, validation_matched, validation_mismatched"),
    ("glue/cola", "train[:2]+dev", "has no split"),
    ("my_pixels", "train", "has fields label, pixels, which zoo cannot map to records"),
    ("no_such_dataset", "train", "TFDS knows no dataset 'no_such_dataset'"),
    ("glue/no_such_config", "train", "TFDS dataset 'glue' has no config 'no_such_config'; its configs: cola, sst2"),
    ("glue/ax", "test", "TFDS dataset 'glue/ax' (version 2.0.0) is not prepared under"),
])
def test_problems_are_one_line_errors(data_dir, name, split, message):
    with pytest.raises(DataError) as err:
        datasets.open_tfds(name, split)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_an_empty_data_dir_says_how_to_prepare(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match=r"not prepared under .*tfds build cnn_dailymail --file_format=array_record"):
        datasets.open_tfds("cnn_dailymail", "train")


def test_tfds_mock_data_stands_in_for_prepared_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
        source = datasets.open_tfds("glue/stsb", "validation")
        assert len(source) == 5 and set(source[0]) == {"text", "text_pair", "label"}
        float(source[0]["label"])
