"""Real TFDS datasets prepared on disk, offline, by TFDS's own builders (shared by the TFDS tests).

Each local builder subclasses the real TFDS builder (same name, configs, versions, features) and
replaces only its downloads with a few examples; `skip_registration` keeps it out of TFDS's registry,
where the real class stays. `download_and_prepare` writes ArrayRecord files as `tfds build` would, and
`zoo.datasets` reads them back through the registered real code (or, for names TFDS has no code for,
from the files alone).

A builder writes `count(split)` examples per split (`COUNTS`, else `N`); example `i` of a split says
`phrase(split, i)` where its text goes, "split i" by default. `sized` derives a builder with other
counts and phrases; `prepare` builds a list of (builder, config) into a data directory.
"""

from __future__ import annotations

import types
from typing import Callable

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.datasets.squad import squad_dataset_builder
from tensorflow_datasets.summarization import cnn_dailymail, xsum
from tensorflow_datasets.text import c4, glue
from tensorflow_datasets.translate import wmt14, wmt_t2t

N = 3  # examples per split, unless a builder's COUNTS says otherwise
GLUE = {  # config: (first segment field, second segment field or None)
    "cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"), "stsb": ("sentence1", "sentence2"), "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"), "wnli": ("sentence1", "sentence2"),
}
MNLI_SPLITS = ("train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched")
STSB_SCORES = (0.0, 3.2, 4.75)


class LocalSplits:
    """Splits made by `self.examples(split)` instead of downloads (put it first among the bases)."""

    SPLITS = ("train", "validation", "test")
    COUNTS: dict[str, int] = {}

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in self.SPLITS}

    def _generate_examples(self, split):
        yield from enumerate(self.examples(split))

    def count(self, split: str) -> int:
        return self.COUNTS.get(split, N)

    @staticmethod
    def phrase(split: str, i: int) -> str:
        return f"{split} {i}"


class Glue(LocalSplits, glue.Glue, skip_registration=True):
    name = "glue"

    @property
    def SPLITS(self):
        name = self.builder_config.name
        if name.startswith("mnli_"):
            return ("validation", "test")
        return MNLI_SPLITS if name == "mnli" else LocalSplits.SPLITS

    def examples(self, split):
        cfg = self.builder_config
        for i in range(self.count(split)):
            example = {field: f"{cfg.name} {self.phrase(split, i)} {field}" for field in cfg.text_features}
            if split.startswith("test"):
                example["label"] = -1  # GLUE's test labels are hidden; TFDS stores -1
            elif cfg.label_classes:
                example["label"] = i % len(cfg.label_classes)
            else:
                example["label"] = STSB_SCORES[i % len(STSB_SCORES)]
            yield {**example, "idx": i}


class LocalTranslations(LocalSplits):
    WORDS = {"de": "hallo", "en": "hello", "fr": "bonjour"}

    def examples(self, split):
        for i in range(self.count(split)):
            yield {lang: f"{self.WORDS[lang]} {self.phrase(split, i)}" for lang in self.builder_config.language_pair}


class Wmt14Translate(LocalTranslations, wmt14.Wmt14Translate, skip_registration=True):
    name = "wmt14_translate"


class WmtT2tTranslate(LocalTranslations, wmt_t2t.WmtT2tTranslate, skip_registration=True):
    name = "wmt_t2t_translate"


class CnnDailymail(LocalSplits, cnn_dailymail.CnnDailymail, skip_registration=True):
    name = "cnn_dailymail"

    def examples(self, split):
        for i in range(self.count(split)):
            yield {"article": f"article {self.phrase(split, i)}", "highlights": f"highlight {i}.\nsecond {i}.",
                   "publisher": "cnn", "id": f"{split}{i}"}


class Xsum(LocalSplits, xsum.Xsum, skip_registration=True):
    name = "xsum"

    def examples(self, split):
        for i in range(self.count(split)):
            yield {"document": f"document {self.phrase(split, i)}", "summary": f"summary {i}"}


class Squad(LocalSplits, squad_dataset_builder.Builder, skip_registration=True):
    name = "squad"
    SPLITS = ("train", "validation")

    @classmethod
    def get_metadata(cls):  # TFDS reads it from the package beside the builder: the real one's
        return squad_dataset_builder.Builder.get_metadata()

    def examples(self, split):
        for i in range(self.count(split)):
            answers = {"text": [f"answer {i}", f"other {i}"], "answer_start": [0, 5]}
            if self.builder_config.name == "v2.0" and i == 0:
                answers = {"text": [], "answer_start": []}  # an unanswerable question
            example = {"id": f"{split}{i}", "title": "t", "context": f"context {self.phrase(split, i)}",
                       "question": f"question {i}?", "answers": answers}
            if self.builder_config.name == "v2.0":
                example.update(is_impossible=not answers["text"], plausible_answers=answers)
            yield example


class C4(LocalSplits, c4.C4, skip_registration=True):
    name = "c4"
    SPLITS = ("train", "validation")

    def examples(self, split):
        for i in range(self.count(split)):
            yield {"text": f"web page {self.phrase(split, i)}", "url": "u", "content-type": "text/plain",
                   "content-length": "1", "timestamp": "2019"}


class Generic(LocalSplits, tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Datasets TFDS has no code for, read from their files alone: `FEATURES` and `ROW(split, i)`."""

    VERSION = tfds.core.Version("1.0.0")
    SPLITS = ("train", "validation")

    KEYS = None

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=self.FEATURES, supervised_keys=self.KEYS)

    def examples(self, split):
        return [self.row(split, i) for i in range(self.count(split))]


class MySentences(Generic, skip_registration=True):
    FEATURES = tfds.features.FeaturesDict({"sentence": tfds.features.Text(),
                                           "label": tfds.features.ClassLabel(num_classes=3)})
    row = staticmethod(lambda split, i: {"sentence": f"s {split} {i}", "label": i})


class MyReviews(Generic, skip_registration=True):
    FEATURES = tfds.features.FeaturesDict({"text": tfds.features.Text(), "label": np.int64})
    row = staticmethod(lambda split, i: {"text": f"r {split} {i}", "label": 1 - i % 2})


class MyPairs(Generic, skip_registration=True):
    FEATURES = tfds.features.FeaturesDict({"input": tfds.features.Text(), "target": tfds.features.Text()})
    row = staticmethod(lambda split, i: {"input": f"in {split} {i}", "target": f"out {i}"})


class MyTranslate(Generic, skip_registration=True):  # no src-tgt config: the direction is the supervised keys'
    FEATURES = tfds.features.Translation(languages=("qq", "en"))
    KEYS = ("qq", "en")
    row = staticmethod(lambda split, i: {"qq": f"qq {split} {i}", "en": f"en {split} {i}"})


class MyPixels(Generic, skip_registration=True):
    FEATURES = tfds.features.FeaturesDict({"pixels": tfds.features.Tensor(shape=(2,), dtype=np.uint8),
                                           "label": np.int64})
    row = staticmethod(lambda split, i: {"pixels": np.zeros(2, np.uint8), "label": i})


def sized(cls: type, counts: dict[str, int], phrase: Callable[[str, int], str] | None = None) -> type:
    """A local builder like `cls` that writes `counts[split]` examples per split (N for the others),
    saying `phrase(split, i)` where `cls` says "split i"."""
    body = {"COUNTS": dict(counts), "__module__": cls.__module__}
    if phrase is not None:
        body["phrase"] = staticmethod(phrase)
    return types.new_class(cls.__name__, (cls,), {"skip_registration": True}, lambda ns: ns.update(body))


def prepare(root: str, built: list[tuple[type, str | None]]) -> None:
    """Write every (builder, config) of `built` under the TFDS data directory `root`, as ArrayRecord files."""
    tfds.disable_progress_bar()
    for cls, config in built:
        builder = cls(data_dir=str(root), **({"config": config} if config else {}))
        builder.download_and_prepare(file_format="array_record")
