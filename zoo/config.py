"""Frozen, typed run configuration: a model preset plus training sections, dotted overrides, JSON.

A `Config` is built from a preset (see `models.PRESETS`), then changed with typed dotted overrides
such as `optim.learning_rate=3e-4` or `model.num_layers=2`. Unknown keys and values of the wrong
type raise `ConfigError` with one line saying what is wrong. The whole config is written to
`workdir/config.json`, which is all `eval.py` and `zoo.load` need to rebuild the run.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Annotated, Any, Literal

from zoo.errors import ZooError


class ConfigError(ZooError, ValueError):
    """A bad preset, key or value in a configuration."""


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric field allows (`Annotated[int, POSITIVE]`); None leaves a side open-ended."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value > low, else value >= low
    high_open: bool = False

    def contains(self, value: float) -> bool:
        """Whether `value` is in the range."""
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        """The range as words, e.g. 'in (0, 1)' or '>= 1'."""
        low, high = _number(self.low), _number(self.high)
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {low}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _number(x: float | None) -> str:
    return f"{int(x):,}" if x is not None and float(x).is_integer() else f"{x:g}" if x is not None else ""


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
PROBABILITY = Range(0, 1)  # [0, 1]
OPEN_UNIT = Range(0, 1, low_open=True, high_open=True)  # (0, 1)
RATE = Range(0, 1, high_open=True)  # [0, 1): dropout, Adam's betas
SEED = Range(0, 2**31 - 1)  # what jax.random.key and numpy both take


# Model fields that change how a run computes, not what it computes with: they may differ between a
# run and its resume (or its evaluation); every other model field shapes the params or the data.
RUNTIME_MODEL_FIELDS = ("dtype", "remat", "attention_impl", "dropout")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The optimizer by name (zoo.optim), its learning-rate schedule (zoo.schedules), global-norm
    clipping, gradient accumulation, frozen layers, and the training loss's z-loss and label smoothing."""

    name: Literal["adamw", "adam", "adafactor", "lamb", "lion", "sgd", "adamp"] = "adamw"
    schedule: Literal["cosine", "linear", "constant", "rsqrt", "wsd"] = "cosine"  # each after a linear warmup
    learning_rate: Annotated[float, POSITIVE] = 1e-3  # the peak, reached at the end of warmup
    warmup_steps: Annotated[int, NON_NEGATIVE] = 50
    min_lr_ratio: Annotated[float, PROBABILITY] = 0.1  # cosine/linear/wsd decay to learning_rate * min_lr_ratio
    decay_fraction: Annotated[float, PROBABILITY] = 0.2  # wsd: the last fraction of the steps decays
    weight_decay: Annotated[float, NON_NEGATIVE] = 0.1  # on matrices; not used by adam
    b1: Annotated[float, RATE] = 0.9  # adamw/adam/lamb/adamp; lion's interpolation
    b2: Annotated[float, RATE] = 0.95  # adamw/adam/lamb/adamp; lion's momentum decay
    eps: Annotated[float, POSITIVE] = 1e-8  # adamw/adam/lamb/adamp
    momentum: Annotated[float, RATE] = 0.9  # sgd (0: none)
    nesterov: bool = False  # sgd and adamp
    adafactor_decay_rate: Annotated[float, OPEN_UNIT] = 0.8  # second moments decay with 1 - step^-rate
    adafactor_clip: Annotated[float, NON_NEGATIVE] = 1.0  # update RMS clipping threshold (0: none)
    adafactor_factored: bool = True  # factored second moments for leaves with 2 dims >= adafactor_min_dim
    adafactor_min_dim: Annotated[int, AT_LEAST_ONE] = 128
    adafactor_param_scale: bool = True  # relative step: learning rate times the param's RMS (>= 1e-3)
    adamp_delta: Annotated[float, POSITIVE] = 0.1  # project when |cos(grad, weight)| < delta / sqrt(dim)
    adamp_wd_ratio: Annotated[float, PROBABILITY] = 0.1  # weight decay factor of projected weights
    clip_norm: Annotated[float, NON_NEGATIVE] = 1.0  # 0: no clipping
    grad_accum: Annotated[int, AT_LEAST_ONE] = 1  # micro-batches per step; batch_size must divide by it
    freeze_layers: Annotated[int, NON_NEGATIVE] = 0  # freeze the embeddings and the lowest k layers
    z_loss: Annotated[float, NON_NEGATIVE] = 0.0  # training loss += z_loss * log(Z)^2 per scored token
    label_smoothing: Annotated[float, RATE] = 0.0  # training targets: (1 - a) one-hot + a uniform


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where text comes from and how it becomes batches."""

    source: str = "builtin"  # builtin | text:GLOB (.txt/.jsonl) | arrayrecord:GLOB | tfds:NAME
    batch_size: Annotated[int, AT_LEAST_ONE] = 16  # global batch, in sequences
    seq_len: Annotated[int, AT_LEAST_ONE] = 128
    vocab_size: Annotated[int, Range(16)] = 8000  # size of the sentencepiece model trained on first use
    valid_fraction: Annotated[float, OPEN_UNIT] = 0.02  # held out when the source has no validation split
    eval_split: str = "validation"  # the split evaluated during and after training (tfds: any split name)
    workers: Annotated[int, NON_NEGATIVE] = 0  # grain worker processes per host making rows (0: in-process)
    tokenizer: str = ""  # a trained sentencepiece model to use (python -m zoo.tokenizer); "": train one
    tokenizer_type: Literal["unigram", "bpe"] = "unigram"  # the model a fresh tokenizer is trained as
    tokenizer_sample_chars: Annotated[int, AT_LEAST_ONE] = 10_000_000  # text a fresh tokenizer reads at most


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loop length, logging, evaluation and checkpoint cadence."""

    steps: Annotated[int, AT_LEAST_ONE] = 300
    seed: Annotated[int, SEED] = 0
    log_every: Annotated[int, AT_LEAST_ONE] = 20
    eval_every: Annotated[int, NON_NEGATIVE] = 0  # 0: evaluate only at the end
    eval_batches: Annotated[int, NON_NEGATIVE] = 16  # 0: the whole validation split
    checkpoint_every: Annotated[int, AT_LEAST_ONE] = 200
    keep_checkpoints: Annotated[int, AT_LEAST_ONE] = 3  # the latest checkpoints kept, besides the best
    max_bad_steps: Annotated[int, AT_LEAST_ONE] = 5  # stop after this many consecutive non-finite steps
    spike_sigmas: Annotated[float, NON_NEGATIVE] = 0.0  # skip a step whose loss or log grad norm is this many
    # running standard deviations above its running mean (0: off; 6 is a cautious guard)
    sample_tokens: Annotated[int, NON_NEGATIVE] = 40  # length of the samples printed at the end
    sample_temperature: Annotated[float, NON_NEGATIVE] = 0.7  # 0 is greedy (which loops on small models)
    sample_top_k: Annotated[int, NON_NEGATIVE] = 40


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh shape over ('data', 'fsdp', 'tensor'); data=-1 takes the remaining devices."""

    data: Annotated[int, Range(-1)] = -1
    fsdp: Annotated[int, AT_LEAST_ONE] = 1
    tensor: Annotated[int, AT_LEAST_ONE] = 1


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run needs: the preset name, its family, the model and the training sections."""

    preset: str
    family: str
    model: Any  # the family's frozen config dataclass
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    mesh: MeshConfig = MeshConfig()


def _parse_value(text: str, kind: Any, key: str) -> Any:
    """Parse `text` as the annotated type `kind`, or raise ConfigError."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if type(None) in options and text.lower() in ("none", "null"):
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _parse_value(text, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is typing.Literal:
        choices = typing.get_args(kind)
        if text not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}, got {text!r}")
        return text
    if kind is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{key} expects true or false, got {text!r}")
    if kind in (int, float):
        try:
            value = float(text) if kind is float else int(text)
        except ValueError:
            raise ConfigError(f"{key} expects {kind.__name__}, got {text!r}") from None
        return value
    if kind is str:
        return text
    raise ConfigError(f"{key} cannot be set from the command line")


def _field_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def override(obj: Any, key: str, value: Any, _section: str = "") -> Any:
    """Return a copy of a config dataclass with dotted `key` set; strings are parsed to the field type."""
    head, _, rest = key.partition(".")
    full = _section + key  # errors name the whole flag, e.g. model.norm
    names = {f.name for f in dataclasses.fields(obj)}
    if head not in names:
        raise ConfigError(f"unknown config key {full!r}; valid here: {', '.join(sorted(names))}")
    current = getattr(obj, head)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"{_section + head} has no sub-keys (got {full!r})")
        return dataclasses.replace(obj, **{head: override(current, rest, value, f"{_section}{head}.")})
    if dataclasses.is_dataclass(current):
        raise ConfigError(f"{full!r} is a section; set one of its keys, e.g. {full}.<name>=...")
    kind = _field_types(obj)[head]
    if isinstance(value, str) and kind is not str:
        value = _parse_value(value, kind, full)
    elif not isinstance(value, str):
        value = _check_type(value, kind, full)
    _check_range(type(obj), head, value, full)
    return dataclasses.replace(obj, **{head: value})


def _check_type(value: Any, kind: Any, key: str) -> Any:
    """Check a Python value against an annotated type, allowing int where float is expected."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    base = typing.get_origin(kind) or kind
    if base in (typing.Union, types.UnionType):
        if any(_is_instance(value, k) for k in typing.get_args(kind)):
            return value
    elif _is_instance(value, kind):
        return value
    if typing.get_origin(kind) is typing.Literal:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, typing.get_args(kind)))}, got {value!r}")
    raise ConfigError(f"{key} expects {getattr(kind, '__name__', kind)}, got {value!r}")


def check_fields(obj: Any, prefix: str = "") -> None:
    """Check every field of a config dataclass (and its sections) against its annotated type."""
    hints = _field_types(obj)
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        key = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value):
            check_fields(value, key + ".")
        elif field.name in hints and hints[field.name] is not Any:
            _check_type(value, hints[field.name], key)
            _check_range(type(obj), field.name, value, key)


def _check_range(cls: type, name: str, value: Any, key: str) -> None:
    """Raise ConfigError when a numeric field's value is outside the Range its annotation declares."""
    hint = typing.get_type_hints(cls, include_extras=True).get(name)
    for extra in getattr(hint, "__metadata__", ()):
        if isinstance(extra, Range) and isinstance(value, (int, float)) and not extra.contains(value):
            raise ConfigError(f"{key} must be {extra.describe()}, got {value!r}")


def _is_instance(value: Any, kind: Any) -> bool:
    if kind is type(None):
        return value is None
    if typing.get_origin(kind) is typing.Literal:
        return value in typing.get_args(kind)
    if kind is int and isinstance(value, bool):
        return False
    return isinstance(value, typing.get_origin(kind) or kind)


def apply_overrides(config: Config, assignments: list[str]) -> Config:
    """Apply `key=value` strings (e.g. `optim.learning_rate=3e-4`) to a config."""
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {assignment!r}")
        if key.split(".")[0] in ("preset", "family"):
            raise ConfigError(f"{key} cannot be overridden; choose another --model instead")
        config = override(config, key.strip(), value.strip())
    return config


def to_dict(config: Config) -> dict[str, Any]:
    """The config as plain JSON-able data."""
    return dataclasses.asdict(config)


def to_json(config: Config) -> str:
    """The config as indented JSON text."""
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


def from_dict(data: dict[str, Any], model_class: type) -> Config:
    """Rebuild a Config from `to_dict` output; `model_class` is the family's config dataclass."""
    sections = {"optim": OptimConfig, "data": DataConfig, "train": TrainConfig, "mesh": MeshConfig}
    try:
        kwargs = {name: _build(cls, data.get(name, {})) for name, cls in sections.items()}
        return Config(
            preset=data["preset"],
            family=data["family"],
            model=_build(model_class, data["model"]),
            **kwargs,
        )
    except (KeyError, TypeError) as err:
        raise ConfigError(f"config.json is not a zoo config ({err})") from None


def _build(cls: type, values: dict[str, Any]) -> Any:
    """Instantiate a config dataclass, rejecting unknown keys."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys in config.json: {', '.join(unknown)}")
    obj = cls(**values)
    for key, value in values.items():
        _check_type(value, _field_types(obj)[key], f"{cls.__name__}.{key}")
    return obj
