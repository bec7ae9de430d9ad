"""Train a tokenizer once, outside a run: python -m zoo.tokenizer --data SPEC --vocab-size N --out PATH.model

It reads the same bounded, seeded sample of the train split that train.py reads when it trains its own
tokenizer (`zoo.tokenizer.train_on_sample`), so a pod job can run it once and pass
`--set data.tokenizer=PATH` to every host's train.py instead of each host training one. The ids a model
reserves at the top of the vocabulary come from `--sentinels K` or from its family and preset
(`--family t5 --model t5-small`: T5 reserves its sentinels, BERT 3, GPT none).

Bad input is one `error:` line and exit status 2, and --out is written only when training succeeded.
"""

from __future__ import annotations

import argparse
import os
import sys

import models
from zoo import cli
from zoo import config as config_lib
from zoo import tokenizer as tokenizer_lib


def parser() -> argparse.ArgumentParser:
    """Flags of `python -m zoo.tokenizer`."""
    data = config_lib.DataConfig()
    p = argparse.ArgumentParser(prog="python -m zoo.tokenizer",
                                description="Train a sentencepiece tokenizer on a bounded sample of a data source.")
    p.add_argument("--data", required=True, help="builtin | text:GLOB (.txt/.jsonl) | arrayrecord:GLOB | tfds:NAME")
    p.add_argument("--vocab-size", type=int, required=True, help="ids in the model, reserved ones included")
    p.add_argument("--type", default=data.tokenizer_type, choices=tokenizer_lib.MODEL_TYPES)
    p.add_argument("--sentinels", type=int, default=None, help="ids to reserve at the top (<extra_id_k>)")
    p.add_argument("--family", default=None, choices=sorted(models.FAMILIES),
                   help="reserve what this family's models reserve (with --model: that preset's config)")
    p.add_argument("--model", default=None, help="preset whose reserved ids to use (see models.PRESETS)")
    p.add_argument("--sample-chars", type=int, default=data.tokenizer_sample_chars,
                   help="characters of text to train on, at most (plus one record)")
    p.add_argument("--valid-fraction", type=float, default=data.valid_fraction,
                   help="held out of sources without splits; must match the runs' data.valid_fraction")
    p.add_argument("--seed", type=int, default=config_lib.TrainConfig().seed,
                   help="chooses the sample; must match the runs' train.seed to train what they would")
    p.add_argument("--out", required=True, help="where to write the .model file")
    return p


def reserved_ids(args: argparse.Namespace) -> int:
    """Ids to reserve at the top: --sentinels, else what --family/--model's model config reserves, else 0."""
    if args.sentinels is not None:
        if args.family or args.model:
            raise config_lib.ConfigError("give either --sentinels or --family/--model, not both")
        return args.sentinels
    if args.model:
        family, model_cfg = models.preset(args.model)
        if args.family and args.family != family.name:
            raise config_lib.ConfigError(f"--model {args.model} is a {family.name} preset, not {args.family}")
        return family.reserved_ids(model_cfg)
    if args.family:
        family = models.FAMILIES[args.family]
        return family.reserved_ids(family.Config())
    return 0


def check_arguments(args: argparse.Namespace) -> None:
    """ConfigError for flags that cannot work, before any data is read."""
    ranges = [("--vocab-size", args.vocab_size, config_lib.AT_LEAST_ONE),
              ("--sample-chars", args.sample_chars, config_lib.AT_LEAST_ONE), ("--seed", args.seed, config_lib.SEED),
              ("--valid-fraction", args.valid_fraction, config_lib.OPEN_UNIT)]
    for flag, value, allowed in ranges:
        if not allowed.contains(value):
            raise config_lib.ConfigError(f"{flag} must be {allowed.describe()}, got {value}")
    if os.path.isdir(args.out):
        raise config_lib.ConfigError(f"--out {args.out} is a directory; give the path of a .model file")
    parent = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(parent):
        raise config_lib.ConfigError(f"--out {args.out}: directory {parent} does not exist; create it first")


def main(argv: list[str] | None = None) -> int:
    """Train and write one tokenizer; exit status 2 with one `error:` line on bad input."""
    args = parser().parse_args(argv)
    with cli.user_errors():
        check_arguments(args)
        reserved = reserved_ids(args)
        tokenizer = tokenizer_lib.train_on_sample(
            args.data, args.vocab_size, model_type=args.type, sentinels=reserved,
            sample_chars=args.sample_chars, valid_fraction=args.valid_fraction, seed=args.seed)
        tokenizer.save(args.out)
        print(f"wrote {args.out}: {tokenizer.vocab_size} ids ({args.type}), {reserved} reserved at the top; "
              f"use it with --set data.tokenizer={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
