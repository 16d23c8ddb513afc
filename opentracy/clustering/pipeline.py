"""The clustering pipeline: embed → (reduce) → cluster → outliers → represent, each stage swappable.

    from opentracy.clustering import Pipeline
    from opentracy.clustering.cluster import KMeansClusterer

    result = Pipeline().fit(vectors, texts, cohesion=embedder.cluster_cohesion)
    result = Pipeline(clusterer=KMeansClusterer(50), reducer=None).fit(vectors, texts)

`fit` takes vectors already embedded (the service embeds, through the cache) and works on numpy arrays
only; persistence, stable ids and naming are the service's (service.py). Outliers: items of clusters
smaller than `min_cluster_size`, and items much further from their cluster's centre than its other
members (cosine below the cluster's median minus `outlier_z` robust standard deviations, 1.4826 x the
median absolute deviation), are left unclustered
(label -1), counted and reported; `assign_outliers=True` gives each its nearest cluster instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from opentracy.clustering.cluster import AutoClusterer, Clusterer
from opentracy.clustering.cluster._kmeans import nearest, sums
from opentracy.clustering.reduce import NeighbourSmoothing, NoReduction, Reducer
from opentracy.clustering.represent import CTfidfKeywords, KeywordExtractor
from opentracy.clustering.represent.layout import centre_layout, item_layout
from opentracy.clustering.represent.samples import diverse, representatives


@dataclass
class ClusterStats:
    index: int
    size: int
    cohesion: float  # mean cosine of members to the centre
    threshold: float  # cosine below which an item is an outlier of this cluster
    keywords: list[tuple[str, float]]
    representatives: list[int]  # item indices, closest to the centre first
    diverse: list[int]
    x: float
    y: float


@dataclass
class PipelineResult:
    labels: np.ndarray  # per item: cluster index 0..k-1 (largest first), or -1 (outlier)
    similarity: np.ndarray  # per item: cosine to its cluster's centre (outliers: to the nearest one)
    nearest: np.ndarray  # per item: the nearest cluster (= label for clustered items)
    coords: np.ndarray  # per item: 2-D map position
    centroids: np.ndarray  # k x d, unit
    clusters: list[ClusterStats]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_outliers(self) -> int:
        return int((self.labels < 0).sum())


Progress = Callable[[float, str], None]


class Pipeline:
    def __init__(
        self,
        *,
        reducer: Reducer | None | str = "default",
        clusterer: Clusterer | None = None,
        keywords: KeywordExtractor | None = None,
        min_cluster_size: int = 5,
        outlier_z: float = 4.0,
        assign_outliers: bool = False,
        samples: int = 5,
        layout: bool = True,
        seed: int = 0,
    ) -> None:
        self.reducer = NeighbourSmoothing(seed=seed) if reducer == "default" else reducer or NoReduction()
        self.clusterer = clusterer or AutoClusterer(seed=seed)
        self.keywords = keywords or CTfidfKeywords(seed=seed)
        self.min_cluster_size = max(1, min_cluster_size)
        self.outlier_z = outlier_z
        self.assign_outliers = assign_outliers
        self.samples = samples
        self.layout = layout
        self.seed = seed

    def describe(self) -> dict[str, Any]:
        return {
            "reducer": self.reducer.describe(),
            "clusterer": self.clusterer.describe(),
            "keywords": self.keywords.describe(),
            "min_cluster_size": self.min_cluster_size,
            "outlier_z": self.outlier_z,
            "assign_outliers": self.assign_outliers,
            "samples": self.samples,
            "seed": self.seed,
        }

    def fit(
        self,
        vectors: np.ndarray,
        texts: Sequence[str],
        *,
        cohesion: float | None = None,
        progress: Progress | None = None,
    ) -> PipelineResult:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        n = len(x)
        if len(texts) != n:
            raise ValueError(f"{n} vectors but {len(texts)} texts")
        timings: dict[str, float] = {}
        say = progress or (lambda _f, _m: None)

        t = time.perf_counter()
        say(0.0, "reducing")
        xr = self.reducer.fit_transform(x)
        timings["reduce"] = time.perf_counter() - t

        t = time.perf_counter()
        say(0.2, "clustering")
        part = self.clusterer.fit(xr, original=x, cohesion=cohesion)
        timings["cluster"] = time.perf_counter() - t

        t = time.perf_counter()
        say(0.5, "finding outliers")
        labels, centroids, sim, thresholds, small = self._finalise(x, part.labels)
        near, near_sim = (
            nearest(x, centroids) if len(centroids) else (np.full(n, -1), np.zeros(n, np.float32))
        )
        out_mask = labels < 0
        n_out = int(out_mask.sum())
        if self.assign_outliers and len(centroids):
            labels = labels.copy()
            labels[out_mask] = near[out_mask]
        sim = np.where(labels >= 0, sim, near_sim).astype(np.float32)
        if self.assign_outliers and n_out:
            sim[out_mask] = near_sim[out_mask]
        near = np.where(labels >= 0, labels, near)
        timings["outliers"] = time.perf_counter() - t

        k = len(centroids)
        t = time.perf_counter()
        say(0.6, "keywords")
        kw = self.keywords.keywords(texts, labels, k)
        timings["keywords"] = time.perf_counter() - t

        t = time.perf_counter()
        say(0.75, "samples")
        members = _members(labels, k)
        reps = [representatives(members[c], sim[members[c]], texts, self.samples) for c in range(k)]
        divs = [
            diverse(x, members[c], sim[members[c]], texts, self.samples, seed=self.seed) for c in range(k)
        ]
        timings["samples"] = time.perf_counter() - t

        t = time.perf_counter()
        say(0.85, "map")
        if self.layout and k:
            cxy = centre_layout(centroids, seed=self.seed)
            coords = item_layout(x, np.where(labels >= 0, labels, near), centroids, cxy, seed=self.seed)
        else:
            cxy = np.zeros((k, 2), np.float32)
            coords = np.zeros((n, 2), np.float32)
        timings["layout"] = time.perf_counter() - t

        sizes = np.bincount(labels[labels >= 0], minlength=k)
        coh = np.array([float(sim[members[c]].mean()) if len(members[c]) else 0.0 for c in range(k)])
        clusters = [
            ClusterStats(
                index=c,
                size=int(sizes[c]),
                cohesion=float(coh[c]),
                threshold=float(thresholds[c]),
                keywords=kw[c] if c < len(kw) else [],
                representatives=reps[c],
                diverse=divs[c],
                x=float(cxy[c, 0]),
                y=float(cxy[c, 1]),
            )
            for c in range(k)
        ]
        info = {
            **part.info,
            "n_items": n,
            "n_clusters": k,
            "outliers": n_out,
            "outlier_share": round(n_out / n, 4) if n else 0.0,
            "outliers_assigned": bool(self.assign_outliers and n_out),
            "dissolved_small_clusters": small,
            "seconds": {
                **{k_: round(v, 3) for k_, v in timings.items()},
                "clusterer": part.info.get("seconds"),
            },
            "pipeline": self.describe(),
        }
        say(1.0, "done")
        return PipelineResult(labels, sim, near, coords, centroids, clusters, info)

    def _finalise(
        self, x: np.ndarray, raw: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """Clusters ordered by size (largest first); too-small clusters and far-out members become
        outliers. Returns (labels, unit centroids, cosine to own centroid, per-cluster thresholds,
        number of clusters dissolved for being small)."""
        n = len(x)
        ids = np.unique(raw[raw >= 0])
        if not len(ids):
            empty = np.zeros((0, x.shape[1]), np.float32)
            return np.full(n, -1, np.int64), empty, np.zeros(n, np.float32), np.zeros(0), 0
        sizes = np.bincount(raw[raw >= 0])[ids]
        keep = ids[sizes >= self.min_cluster_size]
        small = int(len(ids) - len(keep))
        order = keep[np.argsort(-sizes[sizes >= self.min_cluster_size], kind="stable")]
        remap = np.full(int(raw.max()) + 1, -1, np.int64)
        remap[order] = np.arange(len(order))
        labels = np.where(raw >= 0, remap[np.maximum(raw, 0)], -1)
        k = len(order)
        if k == 0:
            return labels, np.zeros((0, x.shape[1]), np.float32), np.zeros(n, np.float32), np.zeros(0), small
        inside = labels >= 0
        cent = _unit(sums(x[inside], labels[inside], k))
        sim = _rowdot(x, cent, np.maximum(labels, 0))
        thresholds = np.full(k, -1.0)
        groups = _members(labels, k)
        for c in range(k):
            s = sim[groups[c]]
            if len(s) > 2:  # robust spread (median, MAD): one far item cannot hide itself by widening it
                med = float(np.median(s))
                mad = float(np.median(np.abs(s - med))) * 1.4826
                thresholds[c] = med - self.outlier_z * mad
        far = (labels >= 0) & (sim < thresholds[np.maximum(labels, 0)])
        labels = np.where(far, -1, labels)
        # centroids of the members that stayed
        cent = _unit(sums(x[labels >= 0], labels[labels >= 0], k))
        sim = _rowdot(x, cent, np.maximum(labels, 0))
        return labels, cent.astype(np.float32), sim, thresholds, small


def _rowdot(x: np.ndarray, cent: np.ndarray, labels: np.ndarray, block: int = 65536) -> np.ndarray:
    """cos(x_i, cent[labels_i]) for every row, in blocks (no n x d temporary)."""
    out = np.empty(len(x), dtype=np.float32)
    c32 = cent.astype(np.float32)
    for s in range(0, len(x), block):
        out[s : s + block] = np.einsum("ij,ij->i", x[s : s + block], c32[labels[s : s + block]])
    return out


def _unit(s: np.ndarray) -> np.ndarray:
    return s / np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-12)


def _members(labels: np.ndarray, k: int) -> list[np.ndarray]:
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    return [order[bounds[c] : bounds[c + 1]] for c in range(k)]
