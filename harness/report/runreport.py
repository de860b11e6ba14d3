"""The run's report: per check and key the statistics and verdict, the first divergence, the
environment and timing; report.json is its versioned form (schema 1, docs/design.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = 1


@dataclass
class Divergence:
    check: str
    where: str
    layer: str | None = None
    step: int | None = None
    detail: str = ""
    # from localization (harness/locate/): the paddle name, the call path root -> layer, nearby modules
    paddle_layer: str | None = None
    path: list = field(default_factory=list)
    around: list = field(default_factory=list)

    def to_json(self) -> dict:
        d = {"check": self.check, "where": self.where, "layer": self.layer, "step": self.step, "detail": self.detail}
        d.update({k: v for k, v in (("paddle_layer", self.paddle_layer), ("path", self.path),
                                    ("around", self.around)) if v})
        return d


@dataclass
class RunReport:
    name: str
    checks: list = field(default_factory=list)  # CheckResult
    environment: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    first_divergence: Divergence | None = None
    notes: list = field(default_factory=list)  # what bears on the verdict: the console shows them
    warnings: list = field(default_factory=list)  # Python warnings the workers' code raised: -v shows them
    out_dir: Path | None = None  # where the artifacts (report.json, report.html) are; not part of the JSON
    weight_map: dict | None = None  # how each weight pair was decided (harness/mapping/weights.py Plan.to_json)

    @property
    def aligned(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def text(self, width: int = 100) -> str:
        """The console report as plain text (no colour): an assertion message, a log entry."""
        from harness.report.console import as_text

        return as_text(self.to_json(), str(self.out_dir) if self.out_dir else None, width=width)

    def to_json(self) -> dict:
        return {
            "schema": SCHEMA,
            "name": self.name,
            "aligned": self.aligned,
            "checks": [c.to_json() for c in self.checks],
            "first_divergence": self.first_divergence.to_json() if self.first_divergence else None,
            "environment": self.environment,
            "timing": self.timing,
            "notes": self.notes,
            "warnings": self.warnings,
            "weight_map": self.weight_map,
        }


def read_report(path: Path) -> dict:
    data = json.loads(Path(path).read_text())
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: report schema {data.get('schema')} is not {SCHEMA}")
    return data
