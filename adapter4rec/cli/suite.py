"""`adapter4rec suite run SUITE.yaml`: a study suite (docs/suites.md, suites/README.md)."""
from __future__ import annotations


def _run(args) -> None:
    from ..experiments.suite import run_suite

    run_suite(args.suite, only=args.only, dry_run=args.dry_run, smoke=args.smoke, jobs=args.jobs,
              output=args.output, overrides=args.set)


def add_suite_parser(subparsers) -> None:
    s = subparsers.add_parser("suite", help="run a study suite: many runs declared in one YAML")
    ssub = s.add_subparsers(dest="suite_command", required=True)
    r = ssub.add_parser("run", help="run a suite's runs, skipping finished ones and resuming "
                                    "interrupted ones")
    r.add_argument("suite", help="the suite file (e.g. suites/rq2_scientific.yaml)")
    r.add_argument("--dry-run", action="store_true",
                   help="check every run's config, method and options and list the runs; train nothing")
    r.add_argument("--only", action="append", default=[], metavar="PATTERN",
                   help="only runs whose name matches (a glob, or name terms such as "
                        "method=houlsby,seed=1), and the runs they need; repeatable")
    r.add_argument("--smoke", action="store_true",
                   help="the suite's smoke size: synthetic data and tiny models, minutes on a CPU")
    r.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="N worker processes, one GPU each (CPU: the threads shared out)")
    r.add_argument("--output", help="the suite's output folder (default: the suite's output:)")
    r.add_argument("--set", action="append", default=[], metavar="a.b=value",
                   help="override a config key in every run (folders and names do not change)")
    r.set_defaults(func=_run)
