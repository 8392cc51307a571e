"""Validated-configuration stamps: indexing trusts a config file that was validated, unchanged, at build time.

The sync jobs file and the webhook routes file must be valid before the app starts: a broken file has to
stop start-up with the file, job and field named. Validating them means importing yaml, pydantic and the
models, paid on every cold start (BENCHMARKS.md, cold start). So validation moves to build time,
the way Python moves compilation into ``.pyc`` files:

    python -m shared.stamps        # run by make, CI and azd's prepackage hook

validates each file fully and writes ``<file>.validated.json``: a SHA-256 over the file's bytes and the
validating modules' source, plus the little indexing needs (job names, directions and schedules). At
indexing a stamp whose digest matches is trusted; in every other case (no stamp, the file or the validator
changed since) the file is validated fully right there, so a broken file still stops start-up.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

STAMP_SUFFIX = ".validated.json"
STAMP_FORMAT = 1
SHARED_ROOT = Path(__file__).resolve().parent
JOBS_VALIDATORS = (SHARED_ROOT / "sync" / "jobs.py",)
ROUTES_VALIDATORS = (SHARED_ROOT / "webhooks" / "routes.py", SHARED_ROOT / "sync" / "jobs.py")


def stamp_path(file: Path) -> Path:
    return file.with_name(file.name + STAMP_SUFFIX)


def digest(file: Path, validators: tuple[Path, ...]) -> str:
    """SHA-256 of the config file and of the code that validates it (a changed rule invalidates the stamp)."""
    sha = hashlib.sha256(f"dvbridge-stamp-{STAMP_FORMAT}\0".encode())
    for part in (file, *validators):
        sha.update(part.read_bytes())
        sha.update(b"\0")
    return sha.hexdigest()


def read_stamp(file: Path, validators: tuple[Path, ...]) -> dict[str, Any] | None:
    """The stamp's summary if it was written for exactly these bytes; None otherwise (validate fully)."""
    try:
        stamp = json.loads(stamp_path(file).read_text(encoding="utf-8"))
        current = digest(file, validators)
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or stamp.get("digest") != current or not isinstance(stamp.get("summary"), dict):
        return None
    summary: dict[str, Any] = stamp["summary"]
    return summary


def write_stamp(file: Path, validators: tuple[Path, ...], summary: dict[str, Any]) -> Path:
    """Record that ``file`` passed full validation; call only after it did."""
    target = stamp_path(file)
    payload = {"file": file.name, "digest": digest(file, validators), "summary": summary}
    target.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return target


def main() -> int:
    """Validate the jobs and routes files named by the settings (or the defaults) and stamp them."""
    from shared.errors import ConfigError
    from shared.sync.jobs_file import jobs_file, validate_jobs_file
    from shared.webhooks.routes_file import routes_file, validate_routes_file

    failed = False
    for path, validate in ((jobs_file(), validate_jobs_file), (routes_file(), validate_routes_file)):
        try:
            written = validate(path, stamp=True)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            failed = True
            continue
        print(f"{path.name}: valid" + (f", stamped {written.name}" if written else " (absent: nothing to stamp)"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
