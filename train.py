"""Train a zoo model: python train.py [--model PRESET] [--data SOURCE] [--workdir DIR] [--steps N] ...

config -> mesh -> tokenizer/data -> model -> state (restore | --init-from | fresh init) -> loop.
Re-running on a workdir resumes from its latest checkpoint.
"""

import sys

from zoo import cli, experiment, preemption, runs, sharding, trainer, workdir


def main(argv: list[str] | None = None) -> int:
    args = cli.train_parser().parse_args(argv)
    with cli.user_errors():
        sharding.init_distributed(args.coordinator, args.num_processes, args.process_id, args.init_timeout)
        cfg = workdir.run_config(args.workdir, args.model, cli.overrides(args))
        with workdir.claim(args.workdir):
            exp = experiment.build(cfg, args.workdir, init_from=args.init_from)
            workdir.save_config(exp.config, args.workdir)
            state, data_state = runs.restore_or_init(exp, init_from=args.init_from)
            try:
                state = trainer.fit(exp, state, data_state)
            except preemption.Stopped as stopped:  # saved; the closing report would outlast the grace period
                print(stopped, file=sys.stderr, flush=True)
                return stopped.exit_code
            # as many batches as the evaluations during training; eval.py reads the whole split
            runs.report(exp, state.params, max_batches=exp.config.train.eval_batches)
    return 0


if __name__ == "__main__":
    sys.exit(main())
