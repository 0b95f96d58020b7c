"""`adapter4rec suite run SUITE.yaml`: a study suite (docs/suites.md, suites/README.md)."""
from __future__ import annotations

from pathlib import Path


# the suites shipped inside the package (the repository's suites/ links here)
SHIPPED = Path(__file__).resolve().parents[1] / "suites"


def suite_file(name: str) -> Path:
    """A suite file's path, or the shipped suite of that name (``rq2_scientific``)."""
    p = Path(name)
    if p.exists() or p.suffix in (".yaml", ".yml") and p.parent != Path("."):
        return p
    shipped = SHIPPED / (name if name.endswith(".yaml") else f"{name}.yaml")
    return shipped if shipped.is_file() else p


def _run(args) -> None:
    from ..experiments.suite import run_suite

    run_suite(suite_file(args.suite), only=args.only, dry_run=args.dry_run, smoke=args.smoke,
              jobs=args.jobs, output=args.output, overrides=args.set)


def _list(args) -> None:
    import yaml

    for p in sorted(SHIPPED.glob("*.yaml")):
        about = (yaml.safe_load(p.read_text(encoding="utf-8")) or {}).get("description", "")
        print(f"{p.stem:24} {about}")
    print(f"(in {SHIPPED}; run one with `adapter4rec suite run NAME`)")


def add_suite_parser(subparsers) -> None:
    s = subparsers.add_parser("suite", help="run a study suite: many runs declared in one YAML")
    ssub = s.add_subparsers(dest="suite_command", required=True)
    r = ssub.add_parser("run", help="run a suite's runs, skipping finished ones and resuming "
                                    "interrupted ones")
    r.add_argument("suite", help="the suite file (e.g. suites/rq2_scientific.yaml), or the name of "
                                 "a shipped suite (rq2_scientific; adapter4rec suite list)")
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
    ls = ssub.add_parser("list", help="the suites shipped with the package (the study's RQ1-RQ4, GPSD, ...)")
    ls.set_defaults(func=_list)
