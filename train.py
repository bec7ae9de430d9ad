"""Train a zoo model: python train.py [--model PRESET] [--data SOURCE] [--workdir DIR] [--steps N] ...

config -> mesh -> tokenizer/data -> model -> state (restore | --init-from | fresh init) -> loop.
Re-running on a workdir resumes from its latest checkpoint.
"""

import sys

from zoo import cli, experiment, runs, trainer


def main(argv: list[str] | None = None) -> int:
    args = cli.train_parser().parse_args(argv)
    with cli.user_errors():
        cli.init_distributed(args)
        cfg = cli.train_config(args)
        exp = experiment.build(cfg, args.workdir, tokenizer=runs.init_from_tokenizer(args.workdir, args.init_from))
        experiment.save_config(exp.config, args.workdir)
        state, position = runs.restore_or_init(exp, init_from=args.init_from)
        state = trainer.fit(exp, state, position)
        runs.report(exp, state.params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
