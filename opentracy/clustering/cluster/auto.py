"""The default clusterer: it picks the number of clusters itself.

1. Micro-clusters: spherical k-means into m small groups (m = n up to 500 items, else n/5, at most 2,000),
   trained on a sample for large inputs: the only stage whose cost grows with n.
2. Ward's hierarchy over the micro-clusters, weighted by their sizes (cluster/_ward.py).
3. The cut: the fewest clusters whose mean cohesion (an item's cosine to its cluster's centre, averaged
   over items, measured on the embedder's own vectors) reaches a target. The target is a property of the
   embedding model, not of the data: for all-MiniLM-L6-v2 it is 0.80, where Banking77's true intents sit
   (their mean cohesion is 0.77; docs/decisions/0022-choosing-k.md). It does not depend on the number of
   items or of tasks: the same target gave 90 clusters on Banking77's 3,080-row test split and 112 on all
   13,083 rows. For an embedder without a measured target, it is placed at the same relative position
   between the data's global cohesion and 1 as 0.80 is on Banking77 with MiniLM.

The cost is O(n m d) for step 1 and O(m^2) for steps 2-3, so it scales to millions of rows with the
micro-cluster cap (the finest group it can separate is then about n / m items; raise `micro_clusters`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from opentracy.clustering.cluster._base import Clusterer, Partition
from opentracy.clustering.cluster._kmeans import spherical_kmeans, sums
from opentracy.clustering.cluster._ward import ward_tree

# Banking77 with MiniLM: global cohesion 0.46, target 0.80 -> relative position 0.63 (decision 0022)
RELATIVE_TARGET = (0.80 - 0.46) / (1 - 0.46)


def calibrated_target(original: np.ndarray) -> float:
    """A cohesion target for an embedder without a measured one (see the module docstring)."""
    g = float(np.linalg.norm(original.mean(0)))
    return g + RELATIVE_TARGET * (1 - g)


def cohesion_by_k(z: np.ndarray, leaf_sums: np.ndarray, n: int) -> np.ndarray:
    """Mean cohesion of every cut of the tree: entry j is for m - j clusters. For unit vectors, the mean
    cosine of a cluster's items to its normalised centre is the length of their mean vector, so each merge
    changes the total by |S_a + S_b| - |S_a| - |S_b| (S: sums of member vectors)."""
    m = len(leaf_sums)
    s = [row for row in np.asarray(leaf_sums, dtype=np.float64)]
    norms = [float(np.linalg.norm(v)) for v in s]
    total = sum(norms)
    out = np.empty(m, dtype=np.float64)
    out[0] = total
    for j, (a, b, _h, _c) in enumerate(z, start=1):
        a, b = int(a), int(b)
        v = s[a] + s[b]
        nv = float(np.linalg.norm(v))
        total += nv - norms[a] - norms[b]
        s.append(v)
        norms.append(nv)
        out[j] = total
    return out / max(n, 1)


def split_distinct_groups(
    z: np.ndarray,
    leaf_sums: np.ndarray,
    weights: np.ndarray,
    leaf_labels: np.ndarray,
    target: float,
    gap: float,
) -> tuple[np.ndarray, int]:
    """Undo merges of two distinct, tight groups that the mean-cohesion cut let through.

    The cut reaches the target on average, so very tight clusters elsewhere can "pay" for one loose merge
    (two prompt templates, say, each at cohesion 0.93, merged at 0.77). A cluster of the cut whose cohesion
    is below the target is split into its two subtrees when both are at least `gap` more cohesive than it;
    the halves are examined the same way. Returns (new leaf labels, number of splits)."""
    m = len(leaf_sums)
    if m < 2:
        return leaf_labels, 0
    sums = list(np.asarray(leaf_sums, dtype=np.float64))
    size = list(np.asarray(weights, dtype=np.float64))
    children: list[tuple[int, int]] = [(-1, -1)] * m
    for a, b, _h, _c in z:
        a, b = int(a), int(b)
        sums.append(sums[a] + sums[b])
        size.append(size[a] + size[b])
        children.append((a, b))

    def coh(node: int) -> float:
        return float(np.linalg.norm(sums[node]) / max(size[node], 1e-12))

    # the tree node of each cluster of the cut: the highest node whose leaves all carry one label
    label_of = np.full(len(sums), -2, dtype=np.int64)
    label_of[:m] = leaf_labels
    for j, (a, b) in enumerate(children[m:], start=m):
        la, lb = label_of[a], label_of[b]
        label_of[j] = la if la == lb else -1
    roots = {}
    for node in range(len(sums)):
        if label_of[node] >= 0:
            roots[int(label_of[node])] = node  # later (higher) nodes overwrite lower ones
    out = leaf_labels.copy()
    next_label = int(leaf_labels.max()) + 1
    splits = 0
    stack = list(roots.values())
    while stack:
        node = stack.pop()
        if node < m:
            continue
        a, b = children[node]
        c = coh(node)
        if c < target and coh(a) >= c + gap and coh(b) >= c + gap:
            leaves_b = _leaves(b, children, m)
            out[leaves_b] = next_label
            next_label += 1
            splits += 1
            stack += [a, b]
    return out, splits


def _leaves(node: int, children: list[tuple[int, int]], m: int) -> list[int]:
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        if n < m:
            out.append(n)
        else:
            stack += list(children[n])
    return out


def cut(z: np.ndarray, m: int, k: int) -> np.ndarray:
    """Leaf labels 0..k-1 for the tree cut into k clusters."""
    if m == 1 or k >= m:
        return np.arange(m)
    from scipy.cluster.hierarchy import fcluster

    return fcluster(z, k, criterion="maxclust").astype(np.int64) - 1


class AutoClusterer(Clusterer):
    name = "auto"

    def __init__(
        self,
        *,
        target_cohesion: float | None = None,
        n_clusters: int | None = None,
        micro_clusters: int | None = None,
        max_micro_clusters: int = 2000,
        sample: int | None = None,
        iters: int = 8,
        seed: int = 0,
        split_gap: float | None = 0.1,
    ) -> None:
        self.split_gap = split_gap
        self.target_cohesion = target_cohesion
        self.n_clusters = n_clusters
        self.micro_clusters = micro_clusters
        self.max_micro_clusters = max_micro_clusters
        self.sample = sample
        self.iters = iters
        self.seed = seed

    def micro_count(self, n: int) -> int:
        if self.micro_clusters:
            return max(1, min(n, self.micro_clusters))
        return n if n <= 500 else min(max(500, n // 5), self.max_micro_clusters)

    def fit(
        self, x: np.ndarray, *, original: np.ndarray | None = None, cohesion: float | None = None
    ) -> Partition:
        n = len(x)
        original = x if original is None else original
        if n == 0:
            return Partition(np.zeros(0, dtype=np.int64), {"k": 0})
        t0 = time.perf_counter()
        m = self.micro_count(n)
        if m == n:
            micro = np.arange(n)
            centres, weights = np.asarray(x, dtype=np.float64), np.ones(n)
            leaf_sums = np.asarray(original, dtype=np.float64)
        else:
            sample = self.sample or min(n, 40 * m)
            _, micro = spherical_kmeans(x, m, iters=self.iters, sample=sample, seed=self.seed)
            weights = np.bincount(micro, minlength=m).astype(np.float64)
            keep = weights > 0
            if not keep.all():  # renumber away empty micro-clusters
                remap = np.cumsum(keep) - 1
                micro, weights, m = remap[micro], weights[keep], int(keep.sum())
            centres = sums(x, micro, m) / weights[:, None]
            leaf_sums = sums(original, micro, m)
        t1 = time.perf_counter()
        z = ward_tree(centres, weights)
        curve = cohesion_by_k(z, leaf_sums, n)
        t2 = time.perf_counter()
        if self.n_clusters:
            k, how = min(self.n_clusters, m), "given"
            target = None
        else:
            target = self.target_cohesion or cohesion or calibrated_target(original)
            how = (
                "target cohesion (given)"
                if self.target_cohesion
                else "target cohesion (embedder)"
                if cohesion
                else "target cohesion (calibrated from the data)"
            )
            ok = np.flatnonzero(curve >= target)
            k = m - int(ok.max()) if len(ok) else m
        leaf_labels = cut(z, m, k)
        split = 0
        if not self.n_clusters and self.split_gap:
            leaf_labels, split = split_distinct_groups(
                z, leaf_sums, weights, leaf_labels, target, self.split_gap
            )
            k = int(leaf_labels.max()) + 1
        labels = leaf_labels[micro]
        info: dict[str, Any] = {
            "k": int(k),
            "chosen_by": how,
            "target_cohesion": None if target is None else round(float(target), 4),
            "cohesion": round(float(curve[m - k]), 4),
            "micro_clusters": int(m),
            "split_distinct": split,
            "seconds": {"micro": round(t1 - t0, 3), "tree": round(t2 - t1, 3)},
        }
        return Partition(labels.astype(np.int64), info)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target_cohesion": self.target_cohesion,
            "n_clusters": self.n_clusters,
            "micro_clusters": self.micro_clusters,
            "max_micro_clusters": self.max_micro_clusters,
            "seed": self.seed,
        }
