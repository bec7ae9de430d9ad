"""TFDS datasets by name, read lazily as `tfds.data_source` reads them (ArrayRecord, no TensorFlow), as records.

`open_tfds(name, split)` is what `zoo.sources.open_source("tfds:NAME", split)` calls. NAME is TFDS's:
`glue/mnli`, `wmt14_translate/de-en`, `c4/en:3.1.0`. The dataset must already be prepared (with
`tfds build NAME --file_format=array_record`) under $TFDS_DATA_DIR, or TFDS's default directory;
nothing is downloaded. Each example becomes a record (see `zoo.sources`) when it is read, by a
mapping chosen from the dataset's features when it is opened:

  dataset                          fields                      record
  glue/cola, glue/sst2             sentence, label             text, label
  glue/mrpc, rte, wnli, stsb       sentence1, sentence2, label text, text_pair, label
  glue/qqp                         question1, question2, label text, text_pair, label
  glue/mnli (and _matched, ...)    premise, hypothesis, label  text, text_pair, label
  glue/qnli                        question, sentence, label   text, text_pair, label
  c4/*, any dataset with `text`    text (, label)              text (, label)
  wmt*_translate/xx-yy             Translation {xx, yy}        input "translate X to Y: <xx>", target <yy>
                                   (ask for yy-xx to translate the other way: wmt14_translate/en-de)
  cnn_dailymail                    article, highlights         input "summarize: <article>", target
  xsum                             document, summary           input "summarize: <document>", target
  squad/v1.1, squad/v2.0           question, context, answers  input "question: Q context: C", target
                                                               the first answer ("unanswerable" if none)
  any other                        input, target               input, target

Labels are kept as strings: a class index ("2"; test splits hold "-1", as TFDS stores them) or, for
a float label such as STS-B's similarity score, the shortest float32 repr ("3.2").

Splits are TFDS's, and slices of them ("train[:10%]") pass through. A dataset without a
`validation` split but with `validation_matched` (glue/mnli) gives that one for "validation";
its other splits are asked for by name (`--set data.eval_split=validation_mismatched`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from typing import Any, Callable

import numpy as np

from zoo.errors import DataError

Record = dict[str, str]
Example = dict[str, Any]

LANGUAGES = {  # T5's task prefixes spell languages out; codes not listed here are used as they are
    "ar": "Arabic", "bg": "Bulgarian", "bn": "Bengali", "ca": "Catalan", "cs": "Czech", "da": "Danish",
    "de": "German", "el": "Greek", "en": "English", "es": "Spanish", "et": "Estonian", "eu": "Basque",
    "fa": "Persian", "fi": "Finnish", "fr": "French", "ga": "Irish", "gl": "Galician", "gu": "Gujarati",
    "he": "Hebrew", "hi": "Hindi", "hr": "Croatian", "hu": "Hungarian", "id": "Indonesian",
    "is": "Icelandic", "it": "Italian", "iu": "Inuktitut", "ja": "Japanese", "kk": "Kazakh", "km": "Khmer",
    "ko": "Korean", "lt": "Lithuanian", "lv": "Latvian", "ms": "Malay", "ne": "Nepali", "nl": "Dutch",
    "pl": "Polish", "ps": "Pashto", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "si": "Sinhala",
    "sk": "Slovak", "sl": "Slovenian", "sr": "Serbian", "sv": "Swedish", "ta": "Tamil", "th": "Thai",
    "tr": "Turkish", "uk": "Ukrainian", "ur": "Urdu", "vi": "Vietnamese", "zh": "Chinese",
}
PAIR_FIELDS = (("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"),
               ("question", "sentence"))
TEXT_TO_TEXT_FIELDS = (("article", "highlights", "summarize: "), ("document", "summary", "summarize: "),
                       ("input", "target", ""))
_KNOWN = ("GLUE's sentence pairs, sentence, text, a Translation, article/highlights, document/summary, "
          "SQuAD's question/context/answers, or input/target")


def open_tfds(name: str, split: str) -> TfdsSource:
    """The records of one split of a prepared TFDS dataset; DataError (one line) if it cannot be read."""
    _register_builder_code()
    builder = _builder(untranslated_name(name), os.environ.get("TFDS_DATA_DIR") or None)
    splits = list(builder.info.splits.keys())  # none known: unprepared (or tfds.testing.mock_data)
    tfds_split = resolve_split(name, splits, split) if splits else split
    convert = example_mapping(name, builder.info)
    try:
        examples = builder.as_data_source(split=tfds_split)
    except Exception as err:  # TFDS raises several types, with messages of many lines
        raise DataError(_reading_problem(builder, name, split, err)) from None
    if len(examples) == 0:
        raise DataError(f"split {tfds_split!r} of TFDS dataset {name!r} holds no examples")
    source = TfdsSource(examples, convert)
    source[0]  # a dataset the mapping cannot read fails now, not in the middle of a run
    return source


class TfdsSource:
    """A TFDS data source whose examples are converted to records as they are read.

    TFDS's ArrayRecord source pickles in a few KB and reopens its files in grain's worker processes.
    """

    def __init__(self, examples: Any, convert: Callable[[Example], Record]):
        self.examples, self.convert = examples, convert

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Record:
        if not 0 <= index < len(self.examples):
            raise IndexError(index)
        return self.convert(self.examples[index])


def _builder(name: str, data_dir: str | None) -> Any:
    """The TFDS builder of a dataset: its registered code, else one read from its prepared files."""
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"TFDS knows no dataset {name!r} and none is prepared under {_data_dir()}") from None
    except Exception as err:  # an unknown config or version, a malformed name: several exception types
        raise DataError(_construction_problem(name, err)) from None


def _data_dir() -> str:
    """Where TFDS looks for prepared datasets, for messages."""
    from tensorflow_datasets.core import constants

    return os.environ.get("TFDS_DATA_DIR") or f"{constants.DATA_DIR} (TFDS's default; set TFDS_DATA_DIR)"


def _reading_problem(builder: Any, name: str, split: str, err: Exception) -> str:
    """One line on why TFDS could not read a split of a dataset."""
    if not builder.is_prepared():
        return (f"TFDS dataset {name!r} (version {builder.version}) is not prepared under {_data_dir()}; "
                f"prepare it with `tfds build {name} --file_format=array_record`")
    if isinstance(err, NotImplementedError):  # TFDS's answer for files it cannot read by index
        kind = getattr(builder.info.file_format, "value", builder.info.file_format)
        return (f"TFDS dataset {name!r} is prepared as {kind} files, which cannot be read by index; "
                f"rebuild it with `tfds build {name} --file_format=array_record`")
    return f"cannot read split {split!r} of TFDS dataset {name!r}: {_first_line(err)}"


def _register_builder_code() -> None:
    """Import the TFDS modules that register GLUE, C4, WMT, CNN/DailyMail and XSum.

    With the code registered, a name without a config or version resolves as `tfds build` wrote it
    (glue -> glue/cola at 2.0.0), and `tfds.testing.mock_data` can stand in for the files.
    Datasets whose code is missing are still read from their prepared files.
    """
    for module in ("text", "translate", "summarization"):  # TFDS is heavy: imported only by runs that read it
        with contextlib.suppress(ImportError):  # an optional dependency of TFDS is missing
            __import__(f"tensorflow_datasets.{module}")


def _config_part(name: str) -> str:
    """The config of a TFDS name ("de-en" of "wmt14_translate/de-en:1.0.0"), or ""."""
    return name.partition("/")[2].split(":")[0]


def _code_configs(dataset: str) -> list[str]:
    """The config names the registered code of a dataset defines ([] if it has no code here)."""
    import tensorflow_datasets as tfds

    try:
        return list(tfds.builder_cls(dataset.split(":")[0]).builder_configs)
    except Exception:  # DatasetNotFoundError, or a malformed name that tfds.builder reports better
        return []


def untranslated_name(name: str) -> str:
    """The TFDS name to open for `name`: `wmt14_translate/en-de` opens `wmt14_translate/de-en`.

    TFDS's WMT configs all translate into English; T5 also translates out of it, from the same data.
    """
    config = _config_part(name)
    source, dash, target = config.partition("-")
    configs = _code_configs(name.partition("/")[0])
    if dash and config not in configs and f"{target}-{source}" in configs:
        return name.replace(f"/{config}", f"/{target}-{source}", 1)
    return name


def _construction_problem(name: str, err: Exception) -> str:
    """One line on why TFDS could not construct a builder for `name`."""
    dataset, config = name.partition("/")[0], _config_part(name)
    configs = _code_configs(dataset)
    if config and configs and config not in configs:
        return f"TFDS dataset {dataset!r} has no config {config!r}; its configs: {', '.join(configs)}"
    return f"cannot open TFDS dataset {name!r}: {_first_line(err)}"


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def resolve_split(name: str, available: list[str], split: str) -> str:
    """The TFDS split (or slice expression) that zoo's `split` reads; DataError if there is none."""
    if split not in available and split == "validation" and "validation_matched" in available:
        return "validation_matched"  # glue/mnli: the matched (in-domain) half is GLUE's headline number
    parts = [re.split(r"\[", part, maxsplit=1)[0].strip() for part in split.split("+")]
    if all(part in available for part in parts):
        return split
    raise DataError(f"TFDS dataset {name!r} has no split {split!r}; its splits: {', '.join(available)}")


def example_mapping(name: str, info: Any) -> Callable[[Example], Record]:
    """The function from an example of dataset `name` (DatasetInfo `info`) to a record; DataError if none fits.

    A translation goes the way the config in `name` says (`en-de`: English to German), else the
    way of the dataset's config or supervised keys. Only a numeric `label` (a class or a score) is kept.
    """
    import tensorflow_datasets as tfds

    features = info.features
    if isinstance(features, tfds.features.Translation):
        config = _config_part(name) or info.config_name or ""
        source, target = translation_direction(list(features.languages), config, info.supervised_keys)
        prefix = f"translate {LANGUAGES.get(source, source)} to {LANGUAGES.get(target, target)}: "
        return functools.partial(_text_to_text, source, target, prefix)
    fields = set(features.keys())
    label = "label" if "label" in fields and np.dtype(features["label"].np_dtype).kind in "iuf" else None
    for a, b in PAIR_FIELDS:
        if {a, b} <= fields:
            return functools.partial(_segments, a, b, label)
    for single in ("sentence", "text"):
        if single in fields:
            return functools.partial(_segments, single, None, label)
    for a, b, prefix in TEXT_TO_TEXT_FIELDS:
        if {a, b} <= fields:
            return functools.partial(_text_to_text, a, b, prefix)
    if {"question", "context", "answers"} <= fields:
        return _squad
    raise DataError(f"TFDS dataset {name!r} has fields {', '.join(sorted(fields))}, which zoo cannot map "
                    f"to records; it reads {_KNOWN}")


def translation_direction(languages: list[str], config: str, supervised_keys: Any) -> tuple[str, str]:
    """(source, target) language codes: from a config named `src-tgt` (WMT's), else the supervised keys."""
    match = re.fullmatch(r"([\w]+)-([\w]+)(\..*)?", config)
    if match and {match[1], match[2]} <= set(languages):
        return match[1], match[2]
    if supervised_keys and len(supervised_keys) == 2 and set(supervised_keys) <= set(languages):
        return supervised_keys[0], supervised_keys[1]
    if len(languages) == 2:
        return languages[0], languages[1]
    raise DataError(f"cannot tell the translation direction among languages {', '.join(languages)}")


def _text(value: Any) -> str:
    """A TFDS text value (bytes from ArrayRecord) as str."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def label_text(value: Any) -> str:
    """A label as zoo's string: a class index, or the shortest repr of a float32 score."""
    if np.issubdtype(np.asarray(value).dtype, np.floating):
        return str(np.float32(value))  # numpy prints float32 shortest-first: 3.2, not 3.200000047683716
    return str(int(value))


def _segments(a: str, b: str | None, label: str | None, example: Example) -> Record:
    record = {"text": _text(example[a])}
    if b is not None:
        record["text_pair"] = _text(example[b])
    if label is not None:
        record["label"] = label_text(example[label])
    return record


def _text_to_text(source: str, target: str, prefix: str, example: Example) -> Record:
    return {"input": prefix + _text(example[source]), "target": _text(example[target])}


def _squad(example: Example) -> Record:
    answers = example["answers"]["text"]
    return {"input": f"question: {_text(example['question'])} context: {_text(example['context'])}",
            "target": _text(answers[0]) if len(answers) else "unanswerable"}
