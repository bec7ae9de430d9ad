"""Evaluate a workdir's checkpoint: python eval.py --workdir DIR [--step N] [--json PATH].

Rebuilds the run from DIR/config.json with the same builders as train.py, restores the params onto
every device here (all on `data`, or --mesh), whatever mesh trained it, and prints validation metrics and sampled continuations.
"""

import sys

from zoo import cli, experiment, runs, sharding, workdir


def main(argv: list[str] | None = None) -> int:
    args = cli.eval_parser().parse_args(argv)
    with cli.user_errors():
        sharding.init_distributed(args.coordinator, args.num_processes, args.process_id, args.init_timeout)
        cli.check_output_path(args.json)
        # any devices, any mesh: not necessarily those the run was trained on
        cfg = runs.for_these_devices(workdir.load_config(args.workdir), cli.mesh_flag(args.mesh))
        exp = experiment.build(cfg, args.workdir, tokenizer=workdir.require_tokenizer(args.workdir))
        params, step = runs.restore_params(exp, args.step)
        summary = runs.report(exp, params, step=step, samples=args.samples)
        if args.json:
            workdir.write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
