"""Class-based TF-IDF keywords: a term scores high for a cluster when it is frequent in that cluster and
rare across the others (each cluster's texts are treated as one document):

    w(t, c) = tf(t, c) / words(c) * log(1 + A / f(t))

where A is the mean number of words per cluster and f(t) the term's frequency over all clusters. Counting
uses scikit-learn's CountVectorizer (its English stop words plus the filler of requests — "help",
"need", "thanks", contractions — which says nothing about a task; unigrams and bigrams). For large runs
each cluster contributes at most `per_cluster` texts (a random sample), so the cost is bounded by k x that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from opentracy.clustering.represent._base import KeywordExtractor

# words of asking, not of the task asked about
REQUEST_FILLER = frozenset(
    [
        "hi",
        "hello",
        "hey",
        "thanks",
        "thank",
        "thx",
        "pls",
        "plz",
        "help",
        "need",
        "needs",
        "want",
        "wants",
        "wanted",
        "like",
        "know",
        "just",
        "did",
        "does",
        "doing",
        "don",
        "dont",
        "didn",
        "didnt",
        "doesn",
        "doesnt",
        "isn",
        "isnt",
        "wasn",
        "wasnt",
        "aren",
        "arent",
        "haven",
        "havent",
        "hasn",
        "hasnt",
        "won",
        "wont",
        "wouldn",
        "couldn",
        "shouldn",
        "can't",
        "cant",
        "im",
        "ive",
        "i'm",
        "i've",
        "i'd",
        "i'll",
        "ll",
        "ve",
        "re",
        "let",
        "lets",
        "ok",
        "okay",
        "yes",
        "please",
        "having",
        "think",
        "thought",
        "wondering",
        "got",
        "getting",
        "tell",
        "able",
        "possible",
        "really",
    ]
)


class CTfidfKeywords(KeywordExtractor):
    name = "c-tf-idf"

    def __init__(
        self, top: int = 10, ngram_range: tuple[int, int] = (1, 2), per_cluster: int = 500, seed: int = 0
    ) -> None:
        self.top = top
        self.ngram_range = ngram_range
        self.per_cluster = per_cluster
        self.seed = seed

    def keywords(self, texts: Sequence[str], labels: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        from sklearn.feature_extraction.text import CountVectorizer

        if k == 0:
            return []
        rng = np.random.default_rng(self.seed)
        rows: list[int] = []
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(k + 1))
        for c in range(k):
            idx = np.sort(order[bounds[c] : bounds[c + 1]])
            if len(idx) > self.per_cluster:
                idx = np.sort(rng.choice(idx, self.per_cluster, replace=False))
            rows.extend(idx.tolist())
        docs = [texts[i] for i in rows]
        lab = labels[rows]
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        vec = CountVectorizer(
            stop_words=sorted(ENGLISH_STOP_WORDS | REQUEST_FILLER),
            ngram_range=self.ngram_range,
            token_pattern=r"(?u)\b[^\W\d_][\w-]*[^\W_]\b",
            lowercase=True,
            min_df=1,
        )
        try:
            counts = vec.fit_transform(docs)
        except ValueError:  # nothing but stop words and digits
            return [[] for _ in range(k)]
        import scipy.sparse as sp

        onehot = sp.csr_matrix((np.ones(len(lab)), (lab, np.arange(len(lab)))), shape=(k, len(lab)))
        tf = (onehot @ counts).astype(np.float64).tocsr()  # k x terms
        words = np.asarray(tf.sum(1)).ravel()
        freq = np.asarray(tf.sum(0)).ravel()
        avg = float(words.mean()) if len(words) else 1.0
        idf = np.log(1.0 + avg / np.maximum(freq, 1.0))
        terms = vec.get_feature_names_out()
        out: list[list[tuple[str, float]]] = []
        for c in range(k):
            row = tf.getrow(c)
            if row.nnz == 0:
                out.append([])
                continue
            score = row.data / max(words[c], 1.0) * idf[row.indices]
            best = np.argsort(-score, kind="stable")[: self.top * 2]
            picked = _drop_redundant([(str(terms[row.indices[i]]), float(score[i])) for i in best], self.top)
            out.append(picked)
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "top": self.top, "ngram_range": list(self.ngram_range)}


def _drop_redundant(scored: list[tuple[str, float]], top: int) -> list[tuple[str, float]]:
    """Drop a unigram that a better-scored bigram already contains, and a bigram that repeats two
    better-scored unigrams in order (keeps the list readable)."""
    out: list[tuple[str, float]] = []
    for term, s in scored:
        words = term.split()
        if len(words) == 1 and any(term in o.split() for o, _ in out if " " in o):
            continue
        out.append((term, round(s, 5)))
        if len(out) >= top:
            break
    return out
