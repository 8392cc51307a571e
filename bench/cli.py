"""The command line every benchmark shares: its options, ``--json`` (one line, read by ``bench.report``)
or a description for people."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

Result = dict[str, Any]


def run_benchmark(
    doc: str | None,
    measure: Callable[[argparse.Namespace], Result],
    describe: Callable[[Result], str],
    options: dict[str, dict[str, Any]] | None = None,
) -> None:
    parser = argparse.ArgumentParser(description=doc)
    for flag, settings in (options or {}).items():
        parser.add_argument(flag, **settings)
    parser.add_argument("--json", action="store_true", help="print one JSON line (for bench.report)")
    args = parser.parse_args()
    result = measure(args)
    print(json.dumps(result) if args.json else describe(result))
