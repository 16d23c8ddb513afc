"""Rows outside the target cluster: by `cluster_id`, and optionally by embedding distance to its centre.

An embedder is anything with `embed(texts) -> array (n, d)` (or a plain callable doing that). Library
callers pass one; a named one in the config is looked up in `EMBEDDERS` (other modules register theirs, e.g.
the clustering stage's local model), so nothing is downloaded here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from opentracy.distillation.curation.config import ClusterRule
from opentracy.distillation.curation.filters._base import Filter, FilterContext, Hit
from opentracy.distillation.curation.rows import CurationRow
from opentracy.errors import InvalidInput


class Embedder(Protocol):
    def embed(self, texts: list[str]) -> Any: ...


# name -> factory. Registered by library users for their own embedders; looked up when a config names one
# that the engine running the curation does not (an engine resolves its local models itself, bound to its
# data directory: ENGINE_NAMES).
EMBEDDERS: dict[str, Callable[[], Embedder | Callable[[list[str]], Any]]] = {}
ENGINE_NAMES = ("minilm", "default", "minilm-torch", "static")


def register_embedder(name: str, factory: Callable[[], Embedder | Callable[[list[str]], Any]]) -> None:
    EMBEDDERS[name] = factory


def resolve_embedder(name: str) -> Embedder | Callable[[list[str]], Any]:
    if name not in EMBEDDERS:
        known = ", ".join(sorted({*EMBEDDERS, *ENGINE_NAMES})) or "none registered in this process"
        raise InvalidInput(
            f"no embedder named {name!r} for the off-cluster distance rule (known: {known}); pass an embedder "
            "object to ClusterFilter, or leave max_distance unset to filter by cluster_id alone"
        )
    return EMBEDDERS[name]()


def _key(v: Any) -> str:
    return json.dumps(v)


class ClusterFilter(Filter):
    name = "off_cluster"

    def __init__(
        self, rule: ClusterRule | None = None, *, embedder: Embedder | Callable[[list[str]], Any] | None = None,
        centre: Any = None,
    ) -> None:  # fmt: skip
        self.rule = rule or ClusterRule()
        self.embedder = embedder
        self.centre = (
            None if centre is None else _unit(np.asarray(centre, dtype=np.float32).reshape(1, -1))[0]
        )
        self.target: Any = None
        self._notes: dict[str, Any] = {}

    def _target(self, rows: Sequence[CurationRow]) -> Any:
        if self.rule.cluster_id != "auto":
            return self.rule.cluster_id
        counts = Counter(
            _key(r.metadata["cluster_id"]) for r in rows if r.metadata.get("cluster_id") is not None
        )
        if not counts:
            return None
        top = max(counts.values())
        return json.loads(min(k for k, c in counts.items() if c == top))

    def check(self, rows: Sequence[CurationRow], ctx: FilterContext | None = None) -> list[Hit | None]:
        rule = self.rule
        self.target = target = self._target(rows)
        self._notes = {"target_cluster": target}
        out: list[Hit | None] = [None] * len(rows)
        if target is None and rule.max_distance is None:
            self._notes["skipped"] = "no row carries a cluster_id"
            return out
        tkey = _key(target)
        for i, r in enumerate(rows):
            c = r.metadata.get("cluster_id")
            if c is None:
                if rule.missing == "drop" and target is not None:
                    out[i] = Hit(f"no cluster_id (target cluster {target})", rule="off_cluster")
            elif target is not None and _key(c) != tkey:
                out[i] = Hit(f"cluster {c}, not the target cluster {target}", rule="off_cluster")
        if rule.max_distance is not None:
            self._by_distance(rows, out, target)
        return out

    def _by_distance(self, rows: Sequence[CurationRow], out: list[Hit | None], target: Any) -> None:
        emb = self.embedder
        if emb is None:
            if not self.rule.embedder:
                raise InvalidInput("the off-cluster distance rule (max_distance) needs an embedder")
            emb = self.embedder = resolve_embedder(self.rule.embedder)
        alive = [i for i, h in enumerate(out) if h is None]
        if not alive:
            return
        fn = emb.embed if hasattr(emb, "embed") else emb
        texts = [rows[i].prompt_text for i in alive]
        vecs = np.vstack(
            [np.asarray(fn(texts[j : j + 1024]), dtype=np.float32) for j in range(0, len(texts), 1024)]
        )
        vecs = _unit(vecs)
        centre = self.centre
        if centre is None:
            tkey = _key(target)
            members = [
                j
                for j, i in enumerate(alive)
                if target is None or _key(rows[i].metadata.get("cluster_id")) == tkey
            ]
            if not members:
                members = list(range(len(alive)))
            centre = _unit(vecs[members].mean(axis=0, keepdims=True))[0]
        dist = 1.0 - vecs @ centre
        limit = float(self.rule.max_distance or 0)
        for j, i in enumerate(alive):
            if dist[j] > limit:
                out[i] = Hit(
                    f"embedding distance {dist[j]:.3f} from the cluster centre > {limit:g}",
                    rule="off_cluster_distance",
                )
        self._notes["distance"] = {
            "max_distance": limit,
            "median": round(float(np.median(dist)), 4),
            "p95": round(float(np.quantile(dist, 0.95)), 4),
        }

    def notes(self) -> dict[str, Any]:
        return self._notes


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=1, keepdims=True)
    n[n == 0] = 1.0
    return v / n
