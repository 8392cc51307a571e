"""Run records: processed source files (name and ETag), checkpoints (watermarks, delta links), run
reports and fan-out chunk reports, each in its own table."""

from __future__ import annotations

import json
from typing import Any

from shared.storage.account import StorageAccount, now_text, table_key

STATE_TABLE = "syncstate"  # watermarks and delta links, one row per job
FILES_TABLE = "syncfiles"  # processed source files (name + ETag), so reruns skip them
RUNS_TABLE = "syncruns"  # run reports
CHUNKS_TABLE = "syncchunks"  # fan-out chunk reports, one partition per run


class RunRecords(StorageAccount):
    def processed(self, job: str) -> dict[str, str]:
        table = self.table(FILES_TABLE)
        return {e["BlobName"]: e["ETag"] for e in table.query_entities(f"PartitionKey eq '{table_key(job)}'")}

    def mark_processed(self, job: str, blob: str, etag: str) -> None:
        self.table(FILES_TABLE).upsert_entity(
            {
                "PartitionKey": table_key(job),
                "RowKey": table_key(blob),
                "BlobName": blob,
                "ETag": etag,
                "ProcessedAt": now_text(),
            }
        )

    def get_state(self, job: str, name: str) -> str | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return str(self.table(STATE_TABLE).get_entity(table_key(job), name)["Value"])
        except ResourceNotFoundError:
            return None

    def set_state(self, job: str, name: str, value: str) -> None:
        self.table(STATE_TABLE).upsert_entity(
            {"PartitionKey": table_key(job), "RowKey": name, "Value": value, "UpdatedAt": now_text()}
        )

    # -- run reports --------------------------------------------------------------------------------------
    def save_report(self, job: str, run_id: str, report: dict[str, Any]) -> None:
        entity = {"PartitionKey": table_key(job), "RowKey": run_id, "Report": json.dumps(report)}
        self.table(RUNS_TABLE).upsert_entity(entity)

    def recent_reports(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = [json.loads(e["Report"]) for e in self.table(RUNS_TABLE).list_entities()]
        rows.sort(key=lambda r: r.get("started_at", ""), reverse=True)
        return rows[:limit]

    def save_chunk_report(self, job: str, run_id: str, chunk_id: str, report: dict[str, Any]) -> None:
        entity = {"PartitionKey": table_key(f"{job}|{run_id}"), "RowKey": chunk_id, "Report": json.dumps(report)}
        self.table(CHUNKS_TABLE).upsert_entity(entity)

    def chunk_reports(self, job: str, run_id: str) -> list[dict[str, Any]]:
        query = f"PartitionKey eq '{table_key(f'{job}|{run_id}')}'"
        return [json.loads(e["Report"]) for e in self.table(CHUNKS_TABLE).query_entities(query)]

    def get_report(self, job: str, run_id: str) -> dict[str, Any] | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return dict(json.loads(self.table(RUNS_TABLE).get_entity(table_key(job), run_id)["Report"]))
        except ResourceNotFoundError:
            return None
