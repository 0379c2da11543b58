"""Counts of skipped records by reason, with the first few keys of each as examples.

Bad records never stop a build and are never dropped silently: each is counted under a named reason
(``no_label``, ``missing_image``, ``corrupt``, ...) and the first ``max_examples`` keys are kept so a
user can look at them. Reports merge in a fixed order (the planning pass, then units by index), so the
examples are the same whatever the number of workers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SkipReport:
    max_examples: int = 20
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str | int]] = field(default_factory=dict)

    def add(self, reason: str, key: str | int) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        listed = self.examples.setdefault(reason, [])
        if len(listed) < self.max_examples:
            listed.append(key)

    def merge(self, other: "SkipReport") -> None:
        for reason, count in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + count
            listed = self.examples.setdefault(reason, [])
            listed.extend(other.examples.get(reason, [])[: self.max_examples - len(listed)])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "counts": dict(sorted(self.counts.items())),
                "examples": {k: v for k, v in sorted(self.examples.items())},
                "max_examples_per_reason": self.max_examples}

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> "SkipReport":
        return cls(obj.get("max_examples_per_reason", 20), dict(obj.get("counts", {})),
                   {k: list(v) for k, v in obj.get("examples", {}).items()})
