"""``python -m shared.sync run <job> | replay <job> [--run RUN] | jobs``: the sync entry points as a CLI.

Uses the app settings from the environment (or ``--env-file .devstack/env``), like the functions do.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.sync", description=__doc__)
    parser.add_argument("command", choices=["run", "replay", "jobs"])
    parser.add_argument("job", nargs="?")
    parser.add_argument("--run", help="with replay: only this run's dead letters")
    parser.add_argument("--env-file", help="KEY=VALUE file to load first (e.g. .devstack/env)")
    args = parser.parse_args(argv)
    if args.env_file:
        from shared.config import load_env_file

        load_env_file(args.env_file)
    from shared.composition import worker
    from shared.sync.engine import SyncContext, replay_dead_letters, run_inbound
    from shared.sync.jobs import InboundJob
    from shared.sync.jobs_file import jobs
    from shared.sync.outbound import run_outbound

    defined = jobs()
    if args.command == "jobs":
        for name, job in defined.items():
            print(f"{name}: {job.direction} {job.table} ({job.schedule})")
        return 0
    if args.job not in defined:
        print(f"no job named {args.job!r}; jobs: {', '.join(sorted(defined))}", file=sys.stderr)
        return 2
    job = defined[args.job]
    if args.command == "replay":
        if not isinstance(job, InboundJob):
            print(f"{args.job} is not an inbound job", file=sys.stderr)
            return 2
        report = replay_dead_letters(args.job, job, SyncContext.on(worker()), run_id=args.run)
    else:
        report = (
            run_inbound(args.job, job, SyncContext.on(worker()))
            if isinstance(job, InboundJob)
            else run_outbound(args.job, job, SyncContext.on(worker()))
        )
    print(json.dumps(report.to_dict(), indent=2))
    return 0 if report.status in ("succeeded", "skipped") else 1


if __name__ == "__main__":
    sys.exit(main())
