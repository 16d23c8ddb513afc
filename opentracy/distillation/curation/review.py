"""The human review queue: the borderline rows a curation run held, and people's decisions on them.

A row is queued at most once per dataset, however often curation selects it. While its version is active a
reviewer approves, rejects or edits it (with a name and a note); the decision is applied to the version at
once (approve: the row stays, tagged `reviewed`; reject: it leaves the version, and stays in the parent
version and in the queue's record; edit: the new text replaces it, the original stays in the record). Rows
still pending when the version freezes follow the run's policy, `exclude` (they leave) or `include` (they
stay), and a `review` step in the version's provenance records the decisions and the policy applied.
Decisions export as data (JSONL or CSV), so human labels can train a judge later.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import func, select

from opentracy.datasets._core import _now_iso, label
from opentracy.errors import Conflict, InvalidInput, NotFound
from opentracy.store.tables import CurationRunRecord, DatasetRecord, ReviewItemRecord, VersionRecord, utcnow

Decision = Literal["approve", "reject", "edit"]
STATUSES = ("pending", "approved", "rejected", "edited", "excluded", "included")
_DECIDED = {"approve": "approved", "reject": "rejected", "edit": "edited"}
REVIEWED_TAG = "reviewed"


class ReviewItem(BaseModel):
    row_id: str
    status: str
    score: float | None = None
    threshold: float | None = None
    version: str
    run_id: str
    reviewer: str | None = None
    note: str | None = None
    original: dict[str, Any]
    edited: dict[str, Any] | None = None
    created_at: datetime
    decided_at: datetime | None = None


class ReviewProgress(BaseModel):
    dataset: str
    total: int
    pending: int
    decided: int
    counts: dict[str, int]
    fraction_done: float


class ReviewService:
    def __init__(self, catalog: Any, datasets: Any) -> None:
        self.catalog = catalog
        self.datasets = datasets
        datasets.add_freeze_hook(self._on_freeze)

    # -- reads -------------------------------------------------------------------------------------
    def _ds(self, s: Any, name: str) -> DatasetRecord:
        ds = s.scalar(select(DatasetRecord).where(DatasetRecord.name == name))
        if ds is None:
            raise NotFound(f"no dataset named {name!r}")
        return ds

    def _item(self, s: Any, ds: DatasetRecord, r: ReviewItemRecord) -> ReviewItem:
        v = s.get(VersionRecord, r.version_id)
        return ReviewItem(
            row_id=r.row_id,
            status=r.status,
            score=r.score,
            threshold=r.threshold,
            version=label(ds.name, v.number) if v else r.version_id,
            run_id=r.run_id,
            reviewer=r.reviewer,
            note=r.note,
            original=r.original,
            edited=r.edited,
            created_at=r.created_at,
            decided_at=r.decided_at,
        )

    def queued_row_ids(self, dataset_id: str) -> set[str]:
        with self.catalog.session() as s:
            return set(
                s.scalars(select(ReviewItemRecord.row_id).where(ReviewItemRecord.dataset_id == dataset_id))
            )

    def items(
        self, name: str, *, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> tuple[list[ReviewItem], int]:
        """Queue items, closest to the threshold first."""
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"unknown review status {status!r}; one of {', '.join(STATUSES)}")
        limit = max(1, min(int(limit), 1000))
        with self.catalog.session() as s:
            ds = self._ds(s, name)
            q = select(ReviewItemRecord).where(ReviewItemRecord.dataset_id == ds.id)
            if status:
                q = q.where(ReviewItemRecord.status == status)
            total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
            q = q.order_by(
                func.abs(
                    func.coalesce(ReviewItemRecord.score, 0) - func.coalesce(ReviewItemRecord.threshold, 0)
                ),
                ReviewItemRecord.id,
            )
            recs = s.scalars(q.offset(max(0, offset)).limit(limit)).all()
            return [self._item(s, ds, r) for r in recs], int(total)

    def get(self, name: str, row_id: str) -> ReviewItem:
        with self.catalog.session() as s:
            ds = self._ds(s, name)
            r = self._rec(s, ds, row_id)
            return self._item(s, ds, r)

    def _rec(self, s: Any, ds: DatasetRecord, row_id: str) -> ReviewItemRecord:
        r = s.scalar(
            select(ReviewItemRecord).where(
                ReviewItemRecord.dataset_id == ds.id, ReviewItemRecord.row_id == row_id
            )
        )
        if r is None:
            raise NotFound(f"row {row_id!r} is not in the review queue of {ds.name!r}")
        return r

    def progress(self, name: str) -> ReviewProgress:
        with self.catalog.session() as s:
            ds = self._ds(s, name)
            counts = dict(
                s.execute(
                    select(ReviewItemRecord.status, func.count())
                    .where(ReviewItemRecord.dataset_id == ds.id)
                    .group_by(ReviewItemRecord.status)
                ).all()
            )
        total = sum(counts.values())
        pending = counts.get("pending", 0)
        return ReviewProgress(
            dataset=name,
            total=total,
            pending=pending,
            decided=total - pending,
            counts={k: counts.get(k, 0) for k in STATUSES},
            fraction_done=round((total - pending) / total, 4) if total else 1.0,
        )

    # -- decisions ---------------------------------------------------------------------------------
    def decide(
        self,
        name: str,
        row_id: str,
        decision: str,
        *,
        reviewer: str,
        note: str | None = None,
        prompt: Any = None,
        response: str | None = None,
    ) -> ReviewItem:
        """Approve, reject or edit a queued row; applied to its version at once (which must be active)."""
        if decision not in _DECIDED:
            raise InvalidInput(f"decision must be approve, reject or edit, not {decision!r}")
        if not reviewer or not reviewer.strip():
            raise InvalidInput("a review decision needs the reviewer's name")
        if decision == "edit" and prompt is None and response is None:
            raise InvalidInput("an edit needs a new prompt or a new response")
        if decision != "edit" and (prompt is not None or response is not None):
            raise InvalidInput(f"'{decision}' takes no new text; use 'edit' to change the row")
        with self.catalog.session() as s:
            ds = self._ds(s, name)
            rec = self._rec(s, ds, row_id)
            v = s.get(VersionRecord, rec.version_id)
            if v is None or v.status != "active":
                vl = label(name, v.number) if v else rec.version_id
                raise Conflict(
                    f"{vl} is frozen, so the review of {row_id!r} is closed (status: {rec.status}). Curate the "
                    "dataset again to review its rows in a new version."
                )
            number, original = v.number, dict(rec.original)
        status = _DECIDED[decision]
        stamp = {
            "status": status,
            "by": reviewer.strip(),
            "at": _now_iso(),
            **({"note": note} if note else {}),
        }
        edited = None
        present = self._present(name, number, row_id)
        if decision == "reject":
            if present is not None:
                self.datasets.delete_rows(name, [row_id], number)
        else:
            base = present or original
            meta = dict(base.get("metadata") or {})
            meta["review"] = stamp
            tags = [t for t in meta.get("tags") or [] if t != REVIEWED_TAG] + [REVIEWED_TAG]
            meta["tags"] = tags
            new_prompt = prompt if prompt is not None else base["prompt"]
            new_response = response if response is not None else base["response"]
            if decision == "edit":
                edited = {"prompt": new_prompt, "response": new_response}
            if present is not None:
                self.datasets.update_row(
                    name, row_id, prompt=new_prompt, response=new_response, metadata=meta, version=number
                )
            else:
                self.datasets.add_rows(
                    name,
                    [{"row_id": row_id, "prompt": new_prompt, "response": new_response, "metadata": meta}],
                    number,
                )
        with self.catalog.session() as s:
            ds = self._ds(s, name)
            rec = self._rec(s, ds, row_id)
            rec.status, rec.reviewer, rec.note, rec.decided_at = status, reviewer.strip(), note, utcnow()
            rec.edited = edited
            s.flush()
            return self._item(s, ds, rec)

    def _present(self, name: str, number: int, row_id: str) -> dict[str, Any] | None:
        try:
            return self.datasets.get_row(name, row_id, number).model_dump()
        except NotFound:
            return None

    # -- the end of a review ------------------------------------------------------------------------
    def finish(
        self, name: str, pending: str | None = None, version: int | str | None = "active"
    ) -> dict[str, Any]:
        """Apply the policy for rows still pending in the active version now (default: the policy of the run
        that queued them) and record the review in its provenance. Freezing does the same by itself."""
        if pending is not None and pending not in ("exclude", "include"):
            raise InvalidInput(f"pending must be 'exclude' or 'include', not {pending!r}")
        v = self.datasets.version(name, version)
        if v.status != "active":
            raise Conflict(f"{v.label} is frozen: its review is already closed")
        return self._close(name, v.id, v.number, pending, trigger="finish")

    def _on_freeze(self, name: str, version: int | str | None) -> None:
        try:
            v = self.datasets.version(name, version)
        except NotFound:
            return  # the freeze itself reports it
        if v.status != "active":
            return
        kinds = [step.get("kind") for step in v.provenance]
        closed = (
            "review" in kinds and kinds[::-1].index("review") < kinds[::-1].index("curation")
            if "curation" in kinds
            else False
        )
        if (
            closed
        ):  # `finish` already closed this version's review; close again only if rows were queued since
            with self.catalog.session() as s:
                waiting = s.scalar(
                    select(func.count()).where(
                        ReviewItemRecord.version_id == v.id, ReviewItemRecord.status == "pending"
                    )
                )
            if not waiting:
                return
        self._close(name, v.id, v.number, None, trigger="freeze")

    def _close(
        self, name: str, version_id: str, number: int, pending: str | None, *, trigger: str
    ) -> dict[str, Any]:
        with self.catalog.session() as s:
            self._ds(s, name)
            recs = s.scalars(select(ReviewItemRecord).where(ReviewItemRecord.version_id == version_id)).all()
            if not recs:
                return {"items": 0}
            waiting = [r.row_id for r in recs if r.status == "pending"]
            policy = pending
            if policy is None:
                run = s.get(CurationRunRecord, recs[0].run_id)
                policy = ((run.config if run else {}).get("review") or {}).get("pending", "exclude")
        present: set[str] = set()
        for k in range(0, len(waiting), 1000):  # rows() answers at most 1000 at a time
            chunk = waiting[k : k + 1000]
            present |= {r.row_id for r in self.datasets.rows(name, number, row_ids=chunk, limit=1000).rows}
        if waiting and policy == "exclude":
            gone = [r for r in waiting if r in present]
            if gone:
                self.datasets.delete_rows(name, gone, number)
        elif waiting:
            stamp = {"status": "included", "by": f"policy ({trigger})", "at": _now_iso()}
            changes = []
            for k in range(0, len(waiting), 1000):
                for row in self.datasets.rows(name, number, row_ids=waiting[k : k + 1000], limit=1000).rows:
                    changes.append({"row_id": row.row_id, "metadata": {**row.metadata, "review": stamp}})
            if changes:
                self.datasets.update_rows(name, changes, number)
        status = "excluded" if policy == "exclude" else "included"
        with self.catalog.session() as s:
            counts: dict[str, int] = {}
            for rec in s.scalars(
                select(ReviewItemRecord).where(ReviewItemRecord.version_id == version_id)
            ).all():
                if rec.status == "pending":
                    rec.status, rec.reviewer, rec.decided_at = status, f"policy ({trigger})", utcnow()
                    rec.note = f"still pending when the review closed; policy: {policy}"
                counts[rec.status] = counts.get(rec.status, 0) + 1
        step = {
            "kind": "review",
            "items": sum(counts.values()),
            "decisions": counts,
            "pending_policy": policy,
            "pending_at_close": len(waiting),
            "closed_by": trigger,
        }
        self.datasets.add_provenance(name, step, number)
        return step

    # -- export ------------------------------------------------------------------------------------
    def export_records(self, name: str, *, include_pending: bool = False) -> list[dict[str, Any]]:
        """Decisions as flat records: what was judged, what the person decided, and the text they approved."""
        with self.catalog.session() as s:
            ds = self._ds(s, name)
            q = (
                select(ReviewItemRecord)
                .where(ReviewItemRecord.dataset_id == ds.id)
                .order_by(ReviewItemRecord.id)
            )
            out = []
            for r in s.scalars(q).all():
                if r.status == "pending" and not include_pending:
                    continue
                v = s.get(VersionRecord, r.version_id)
                o = r.original or {}
                meta = o.get("metadata") or {}
                out.append(
                    {
                        "dataset": name,
                        "version": label(name, v.number) if v else r.version_id,
                        "row_id": r.row_id,
                        "decision": r.status,
                        "label": {
                            "approved": 1,
                            "edited": 1,
                            "included": 1,
                            "rejected": 0,
                            "excluded": 0,
                        }.get(r.status),
                        "reviewer": r.reviewer,
                        "note": r.note,
                        "decided_at": r.decided_at.isoformat() if r.decided_at else None,
                        "judge_score": r.score,
                        "threshold": r.threshold,
                        "judge_scores": (meta.get("judge") or {}).get("scores"),
                        "judge_reason": (meta.get("judge") or {}).get("reason"),
                        "judge_model": (meta.get("judge") or {}).get("model"),
                        "prompt": o.get("prompt"),
                        "response": o.get("response"),
                        "edited_prompt": (r.edited or {}).get("prompt"),
                        "edited_response": (r.edited or {}).get("response"),
                        "run_id": r.run_id,
                    }
                )
            return out

    def export_bytes(
        self, name: str, fmt: str = "jsonl", *, include_pending: bool = False
    ) -> Iterator[bytes]:
        if fmt not in ("jsonl", "csv"):
            raise InvalidInput(f"review decisions export as jsonl or csv, not {fmt!r}")
        recs = self.export_records(name, include_pending=include_pending)
        if fmt == "jsonl":
            for r in recs:
                yield (json.dumps(r, ensure_ascii=False) + "\n").encode()
            return
        buf = io.StringIO()
        cols = [
            "dataset", "version", "row_id", "decision", "label", "reviewer", "note", "decided_at", "judge_score",
            "threshold", "judge_scores", "judge_reason", "judge_model", "prompt", "response", "edited_prompt",
            "edited_response", "run_id",
        ]  # fmt: skip
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        for r in recs:
            w.writerow(
                {
                    k: json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v
                    for k, v in r.items()
                }
            )
        yield buf.getvalue().encode()
