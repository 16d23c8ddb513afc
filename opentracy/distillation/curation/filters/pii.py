"""Rows with personal data or secrets: dropped, flagged, or masked in place (`action="redact"`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from opentracy.distillation.curation.config import PIIRule
from opentracy.distillation.curation.filters._base import Filter, FilterContext, Hit
from opentracy.distillation.curation.pii import PIIDetector
from opentracy.distillation.curation.rows import CurationRow


class PIIFilter(Filter):
    name = "pii"

    def __init__(self, rule: PIIRule | None = None, *, detector: PIIDetector | None = None) -> None:
        self.rule = rule or PIIRule()
        self.action = self.rule.action
        self.detector = detector or PIIDetector(self.rule.kinds, self.rule.names_model)
        self.kinds_found: Counter[str] = Counter()

    def check(self, rows: Sequence[CurationRow], ctx: FilterContext | None = None) -> list[Hit | None]:
        return [self.one(r) for r in rows]

    def one(self, row: CurationRow) -> Hit | None:
        det, where, redact = self.detector, self.rule.fields, self.action == "redact"
        kinds: set[str] = set()
        if not redact and where == "both" and isinstance(row.prompt, str):  # one pass over both texts
            kinds.update(f.kind for f in det.find(row.prompt + "\n" + row.response))
            return self._hit(kinds, {}) if kinds else None
        edit: dict[str, Any] = {}
        if where in ("prompt", "both"):
            if isinstance(row.prompt, str):
                if redact:
                    new, found = det.redact(row.prompt)
                    if found:
                        edit["prompt"] = new
                else:
                    found = det.find(row.prompt)
                kinds.update(f.kind for f in found)
            else:
                msgs = []
                changed = False
                for m in row.prompt:
                    c = m.get("content")
                    if isinstance(c, str):
                        new, found = det.redact(c) if redact else (c, det.find(c))
                        kinds.update(f.kind for f in found)
                        if found and redact:
                            m = {**m, "content": new}
                            changed = True
                    msgs.append(m)
                if changed:
                    edit["prompt"] = msgs
        if where in ("response", "both"):
            if redact:
                new, found = det.redact(row.response)
                if found:
                    edit["response"] = new
            else:
                found = det.find(row.response)
            kinds.update(f.kind for f in found)
        if not kinds:
            return None
        return self._hit(kinds, edit)

    def _hit(self, kinds: set[str], edit: dict[str, Any]) -> Hit:
        self.kinds_found.update(kinds)
        names = ", ".join(sorted(kinds))
        verb = {"drop": "contains", "flag": "contains", "redact": "redacted"}[self.action]
        return Hit(f"{verb} PII: {names}", edit=edit or None, detail={"kinds": sorted(kinds)})

    def notes(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "kinds_found": dict(self.kinds_found),
            "person_names": self.detector.names_status,
        }
