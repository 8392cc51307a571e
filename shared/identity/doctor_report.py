"""The doctor's report: one result per step of the identity chain, with the cause and the fix of what
failed, as text for a terminal and as JSON for ``GET /api/health/doctor``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ICONS = {"ok": "✅", "warn": "⚠️ ", "fail": "❌", "skip": "⏭️ "}


@dataclass
class StepResult:
    name: str
    status: str  # ok | warn | fail | skip
    summary: str
    code: str | None = None
    cause: str | None = None
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class DoctorReport:
    steps: list[StepResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(s.status == "fail" for s in self.steps)

    @property
    def failed_step(self) -> StepResult | None:
        return next((s for s in self.steps if s.status == "fail"), None)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "steps": [asdict(s) for s in self.steps]}

    def render(self) -> str:
        lines = ["dvbridge doctor: the identity chain", ""]
        for step in self.steps:
            lines.append(f"{ICONS[step.status]} {step.name:<18} {step.summary}")
            if step.cause:
                lines.append(f"     cause: {step.cause}")
            if step.fix:
                lines.append(f"     fix:   {step.fix}")
        lines += [
            "",
            "all steps passed" if self.ok else f"failed at: {self.failed_step.name if self.failed_step else '?'}",
        ]
        return "\n".join(lines)
