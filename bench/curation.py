"""Curation benchmark (run by hand, never in CI): precision and recall of every rule filter against injected
noise, rule-filter throughput, and the two anchors measured in the same run: Presidio's rule-based
recognisers for PII, datasketch's MinHash LSH for near duplicates.

Data: ../shared/data/banking77/train.csv (text, category) turned into rows (query -> intent, all in one
cluster), cleaned of the duplicates it already has, then with noise injected (seeded, documented below).
Each injected row carries exactly one kind of noise and is appended after the clean rows, so a copy always
comes after its original:

    exact_duplicate  copies of clean rows, some with other case / spacing
    near_duplicate   copies with one small edit: a typo, a filler word, punctuation
    pii              clean rows with an email, phone, card (Luhn-valid), IBAN (mod-97-valid), national id
                     (US SSN, UK NINO, Spanish DNI), IP address or API key/secret written into the prompt
    empty_response   the response is empty
    truncated        the response cut short, with finish_reason=length
    refusal          the response is an assistant refusal
    off_cluster      an unrelated request (poems, recipes, trivia) with another cluster_id
    too_long         a response of ~3,000 characters (the limit here is 512 estimated tokens)

Clean rows: the CSV's rows minus later copies of an earlier row (exact after normalising case and space,
or character-4-gram Jaccard >= 0.7 to an earlier row; candidates from a 64-band LSH, every pair confirmed by
exact Jaccard), so the injected duplicates are the only ones.

    .venv/bin/python bench/curation.py [--repeat 3] [--seed 7]

Presidio needs `pip install -e '.[bench]'`. Results: a table on stdout, JSON in bench/results/.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import random
import statistics
import string
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opentracy.distillation.curation import (  # noqa: E402
    CurationRow,
    DedupFilter,
    DedupRule,
    ErrorFilter,
    PIIDetector,
    curate_rows,
)
from opentracy.distillation.curation.filters.dedup import exact_key, shingles  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "banking77" / "train.csv"
RULES_CONFIG = {
    "judge": False,
    "review": False,
    "length": {"max_tokens": 512},
    "cluster": {"cluster_id": 1},
    "dedup": {},  # the defaults: 4-character shingles, threshold 0.75
    "rules": [{"name": "not_spam", "drop_if": 'source == "spam"'}],
}
NOISE_COUNTS = {
    "exact_duplicate": 300,
    "near_duplicate": 300,
    "pii": 400,
    "empty_response": 100,
    "truncated": 100,
    "refusal": 100,
    "off_cluster": 200,
    "too_long": 100,
}


# --- data ---------------------------------------------------------------------------------------------


def load_clean(path: Path) -> tuple[list[tuple[str, str]], dict[str, int]]:
    import rensa

    with open(path, encoding="utf-8") as f:
        raw = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    seen: set[str] = set()
    lsh = rensa.RMinHashLSH(threshold=0.5, num_perm=128, num_bands=64)
    sets: list[set[str]] = []
    out: list[tuple[str, str]] = []
    removed = {"exact": 0, "near": 0}
    for text, cat in raw:
        full = text + "\n" + cat
        k = exact_key(full)
        if k in seen:
            removed["exact"] += 1
            continue
        sh = set(shingles(full, 4))
        m = rensa.RMinHash(num_perm=128, seed=1)
        m.update(list(sh))
        if any(len(sh & sets[j]) / len(sh | sets[j]) >= 0.7 for j in lsh.query(m)):
            removed["near"] += 1
            continue
        seen.add(k)
        lsh.insert(len(sets), m)
        sets.append(sh)
        out.append((text, cat))
    return out, {"rows": len(raw), "kept": len(out), **removed}


def luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def card(rnd: random.Random) -> str:
    prefix, n = rnd.choice([("4", 16), ("51", 16), ("55", 16), ("37", 15), ("6011", 16), ("2221", 16)])
    body = prefix + "".join(rnd.choice(string.digits) for _ in range(n - len(prefix) - 1))
    num = body + luhn_digit(body)
    style = rnd.choice(["space", "dash", "plain"])
    if style == "plain":
        return num
    groups = [num[0:4], num[4:10], num[10:]] if n == 15 else [num[i : i + 4] for i in range(0, 16, 4)]
    return (" " if style == "space" else "-").join(groups)


def iban(rnd: random.Random) -> str:
    country, bban = rnd.choice(
        [
            (
                "GB",
                rnd.choice(["WEST", "NWBK", "BARC"]) + "".join(rnd.choice(string.digits) for _ in range(14)),
            ),
            ("DE", "".join(rnd.choice(string.digits) for _ in range(18))),
            ("ES", "".join(rnd.choice(string.digits) for _ in range(20))),
            ("FR", "".join(rnd.choice(string.digits) for _ in range(23))),
            ("NL", "ABNA" + "".join(rnd.choice(string.digits) for _ in range(10))),
        ]
    )
    num = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    s = f"{country}{98 - num % 97:02d}{bban}"
    return " ".join(s[i : i + 4] for i in range(0, len(s), 4)) if rnd.random() < 0.5 else s


def phone(rnd: random.Random) -> str:
    import phonenumbers

    while True:
        kind = rnd.choice(["us1", "us2", "us3", "uk1", "uk2", "fr", "de"])
        d = lambda n: "".join(rnd.choice(string.digits) for _ in range(n))  # noqa: E731
        area = rnd.choice(["212", "415", "617", "312", "206", "512"])
        ex = str(rnd.randint(2, 9)) + d(2)
        s, region = {
            "us1": (f"({area}) {ex}-{d(4)}", "US"),
            "us2": (f"{area}-{ex}-{d(4)}", "US"),
            "us3": (f"+1 {area} {ex} {d(4)}", "US"),
            "uk1": (f"+44 20 7{d(3)} {d(4)}", "GB"),
            "uk2": (f"07{rnd.choice('4579')}{d(2)} {d(6)}", "GB"),
            "fr": (f"+33 6 {d(2)} {d(2)} {d(2)} {d(2)}", "FR"),
            "de": (f"+49 30 {d(7)}", "DE"),
        }[kind]
        if phonenumbers.is_valid_number(phonenumbers.parse(s, region)):
            return s


def national_id(rnd: random.Random) -> str:
    kind = rnd.choice(["ssn", "nino", "dni"])
    if kind == "ssn":
        area = rnd.choice([a for a in range(1, 900) if a != 666])
        return f"{area:03d}-{rnd.randint(1, 99):02d}-{rnd.randint(1, 9999):04d}"
    if kind == "nino":
        a = rnd.choice("ABCEHJKLMNOPRSTWXYZ") + rnd.choice("ABCEHJKLMNPRSTWXYZ")
        ds = "".join(rnd.choice(string.digits) for _ in range(6))
        return (
            f"{a} {ds[:2]} {ds[2:4]} {ds[4:]} {rnd.choice('ABCD')}"
            if rnd.random() < 0.5
            else f"{a}{ds}{rnd.choice('ABCD')}"
        )
    n = rnd.randint(10_000_000, 99_999_999)
    return f"{n}{'TRWAGMYFPDXBNJZSQVHLCKE'[n % 23]}"


def secret(rnd: random.Random) -> str:
    an = string.ascii_letters + string.digits
    r = lambda n, al=an: "".join(rnd.choice(al) for _ in range(n))  # noqa: E731
    return rnd.choice(
        [
            f"sk-proj-{r(40)}",
            f"AKIA{r(16, string.ascii_uppercase + string.digits)}",
            f"ghp_{r(36)}",
            f"xoxb-{r(11, string.digits)}-{r(24)}",
            f"AIza{r(35)}",
            f"sk_live_{r(24)}",
        ]
    )


def email(rnd: random.Random) -> str:
    first = rnd.choice(["ana", "john", "li.wei", "maria", "o.connor", "sam_k", "priya", "jean-luc"])
    dom = rnd.choice(["gmail.com", "example.org", "mail.co.uk", "bank-corp.de", "outlook.fr"])
    return f"{first}{rnd.randint(1, 999)}@{dom}"


def ip(rnd: random.Random) -> str:
    if rnd.random() < 0.7:
        return ".".join(str(rnd.randint(1, 254)) for _ in range(4))
    return ":".join(f"{rnd.randint(0, 65535):x}" for _ in range(8))


PII_MAKERS = {"email": email, "phone": phone, "credit_card": card, "iban": iban, "national_id": national_id,
              "ip_address": ip, "secret": secret}  # fmt: skip
PII_TEMPLATES = {
    "email": ["My email is {x}.", "please write to {x}", "{x} is the address on my account"],
    "phone": ["Call me on {x}.", "my phone number is {x}", "you can reach me at {x} tomorrow"],
    "credit_card": [
        "My card number is {x}.",
        "card {x} was charged twice",
        "the card ending in {x} is blocked",
    ],
    "iban": ["My IBAN is {x}.", "send it to {x} please", "transfer to account {x}"],
    "national_id": ["My ID number is {x}.", "SSN/NINO/DNI: {x}", "they asked for {x} to verify me"],
    "ip_address": [
        "I logged in from {x}.",
        "the app says my IP {x} is blocked",
        "access from {x} was denied",
    ],
    "secret": ["My API key is {x}", "here is the token {x} for the integration", "key={x}"],
}
REFUSALS = [
    "I'm sorry, but I can't assist with that.",
    "I cannot help with that request.",
    "As an AI language model, I don't have access to your account details.",
    "Sorry, I can't provide that information.",
    "I'm unable to help with this.",
    "Unfortunately, I cannot fulfil this request.",
    "I apologize, but I'm not able to share that.",
    "I won't be able to do that.",
    "I must decline to answer this question.",
    "I'm not able to help with account-specific questions.",
]
OFF_TOPICS = [
    "volcanoes",
    "jazz",
    "origami",
    "chess",
    "tulips",
    "glaciers",
    "sushi",
    "kangaroos",
    "lighthouses",
    "opera",
    "robots",
    "tea",
]
OFF_TEMPLATES = [
    "Write a short poem about {a} and {b}.",
    "What is the history of {a} in {c}?",
    "Give me a recipe that uses {a} and {b}.",
    "Explain {a} to a five year old, mentioning {b}.",
    "Translate 'I love {a}' into {c}.",
    "List three fun facts about {a} and {b} for a quiz in {c}.",
]
PLACES = [
    "French",
    "Italian",
    "Japanese",
    "Swahili",
    "Peru",
    "Norway",
    "Egypt",
    "Mongolia",
    "Chile",
    "Iceland",
    "Korean",
    "Greek",
]
FILLERS = ["please", "hi,", "thanks", "urgent:", "hello", "quick question:"]


def perturb(text: str, rnd: random.Random) -> str:
    kind = rnd.choice(["typo", "filler", "punct", "case_filler"])
    words = text.split()
    if kind == "typo":
        cand = [i for i, w in enumerate(words) if len(w) > 3]
        if cand:
            i = rnd.choice(cand)
            w = words[i]
            j = rnd.randint(1, len(w) - 2)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
            return " ".join(words)
    if kind == "filler":
        return f"{rnd.choice(FILLERS)} {text}"
    if kind == "punct":
        t = text.rstrip("?.!")
        return t + rnd.choice(["??", "!", " ?", "..."])
    return f"{text} {rnd.choice(FILLERS)}".lower()


def build(clean: list[tuple[str, str]], seed: int) -> tuple[list[CurationRow], dict[str, str]]:
    rnd = random.Random(seed)
    # Rows that carry noise other than duplication come from a held-out part of the clean rows, so none of
    # them is a copy of a row in the dataset; duplicates copy rows that are in it.
    order = list(range(len(clean)))
    rnd.shuffle(order)
    n_other = sum(v for k, v in NOISE_COUNTS.items() if k not in ("exact_duplicate", "near_duplicate"))
    held_out = [clean[i] for i in order[:n_other]]
    clean = [clean[i] for i in sorted(order[n_other:])]
    rows = [CurationRow(f"c{i}", t, c, {"cluster_id": 1}, i) for i, (t, c) in enumerate(clean)]
    truth: dict[str, str] = {}

    def add(kind: str, prompt: str, response: str, **meta: object) -> None:
        i = len(rows)
        rid = f"n{i}_{kind}"
        rows.append(CurationRow(rid, prompt, response, {"cluster_id": 1, **meta}, i))
        truth[rid] = kind

    picks = rnd.sample(range(len(clean)), NOISE_COUNTS["exact_duplicate"] + NOISE_COUNTS["near_duplicate"])
    it = iter(picks)
    for _ in range(NOISE_COUNTS["exact_duplicate"]):
        t, c = clean[next(it)]
        add("exact_duplicate", t if rnd.random() < 0.5 else "  " + t.upper(), c)
    for _ in range(NOISE_COUNTS["near_duplicate"]):
        t, c = clean[next(it)]
        p = perturb(t, rnd)
        while exact_key(p) == exact_key(t):  # e.g. a typo that swapped two equal letters: not a change
            p = perturb(t, rnd)
        add("near_duplicate", p, c)
    clean, it = held_out, iter(range(len(held_out)))  # the other kinds of noise: held-out rows
    kinds = list(PII_MAKERS)
    for k in range(NOISE_COUNTS["pii"]):
        t, c = clean[next(it)]
        kind = kinds[k % len(kinds)]
        snippet = rnd.choice(PII_TEMPLATES[kind]).format(x=PII_MAKERS[kind](rnd))
        add("pii", f"{t} {snippet}" if rnd.random() < 0.7 else f"{snippet} {t}", c, pii_kind=kind)
    for _ in range(NOISE_COUNTS["empty_response"]):
        t, _c = clean[next(it)]
        add("empty_response", t, rnd.choice(["", " ", "\n"]))
    for _ in range(NOISE_COUNTS["truncated"]):
        t, c = clean[next(it)]
        add("truncated", t, c[: max(1, len(c) // 2)], finish_reason="length")
    for _ in range(NOISE_COUNTS["refusal"]):
        t, _c = clean[next(it)]
        add("refusal", t, rnd.choice(REFUSALS))
    for _ in range(NOISE_COUNTS["off_cluster"]):
        a, b = rnd.sample(OFF_TOPICS, 2)
        p = rnd.choice(OFF_TEMPLATES).format(a=a, b=b, c=rnd.choice(PLACES)) + f" ({rnd.randint(1, 10**6)})"
        add("off_cluster", p, " ".join(rnd.sample(OFF_TOPICS, 6)), cluster_id=2)
    for _ in range(NOISE_COUNTS["too_long"]):
        t, c = clean[next(it)]
        add("too_long", t, (c + " because ") + " ".join(rnd.choice(OFF_TOPICS) for _ in range(330)))
    return rows, truth


# --- measuring ----------------------------------------------------------------------------------------


def pr(pred: set[str], truth: set[str]) -> dict[str, float | int]:
    tp = len(pred & truth)
    return {
        "precision": round(tp / len(pred), 4) if pred else 1.0,
        "recall": round(tp / len(truth), 4) if truth else 1.0,
        "tp": tp,
        "fp": len(pred - truth),
        "fn": len(truth - pred),
    }


def timed(fn, repeat: int):  # type: ignore[no-untyped-def]
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def presidio_recognisers() -> tuple[list, str | None]:  # type: ignore[type-arg]
    """Presidio's rule-based recognisers for the kinds we find, called directly (no NLP engine: the default
    AnalyzerEngine wants a spaCy model it would download)."""
    try:
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            EmailRecognizer,
            EsNifRecognizer,
            IbanRecognizer,
            IpRecognizer,
            PhoneRecognizer,
            UkNinoRecognizer,
            UsSsnRecognizer,
        )
    except Exception as e:
        return [], f"{type(e).__name__}: {e}"
    recs = [
        EmailRecognizer(),
        PhoneRecognizer(supported_regions=("US", "GB", "DE", "FR")),
        CreditCardRecognizer(),
        IbanRecognizer(),
        IpRecognizer(),
        UsSsnRecognizer(),
        UkNinoRecognizer(),
        EsNifRecognizer(),
    ]
    try:
        from presidio_analyzer import AnalyzerEngine

        AnalyzerEngine()
        note = None
    except Exception as e:  # the default engine needs a spaCy model download: say so
        note = f"default AnalyzerEngine unavailable offline ({type(e).__name__}: {str(e)[:120]}); recognisers called directly"
    return recs, note


def presidio_find(recs: list, text: str, min_score: float) -> bool:  # type: ignore[type-arg]
    for r in recs:
        for res in r.analyze(text, r.supported_entities, None):
            if res.score >= min_score:
                return True
    return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if not DATA.exists():
        raise SystemExit(f"no data at {DATA}")
    clean, cleaning = load_clean(DATA)
    rows, truth = build(clean, args.seed)
    n = len(rows)
    by_kind: dict[str, set[str]] = {}
    for rid, k in truth.items():
        by_kind.setdefault(k, set()).add(rid)
    print(f"banking77: {cleaning['rows']:,} rows, {cleaning['kept']:,} clean (removed {cleaning['exact']} exact, "
          f"{cleaning['near']} near copies); {len(truth):,} noisy rows injected -> {n:,} rows")  # fmt: skip
    results: dict[str, object] = {"data": {**cleaning, "rows_benchmarked": n, "noise": NOISE_COUNTS}}

    # 1. The whole rule stage, as the pipeline runs it (all rules, judge off), median of N.
    sec, out = timed(lambda: curate_rows(rows, RULES_CONFIG), args.repeat)
    rep = out.report
    dropped = {d.row.row_id: d.rule for d in out.dropped}
    rule_of_kind = {"exact_duplicate": "exact_duplicate", "near_duplicate": "near_duplicate", "pii": "pii",
                    "empty_response": "empty_response", "truncated": "truncated", "refusal": "refusal",
                    "off_cluster": "off_cluster", "too_long": "too_long"}  # fmt: skip
    pipeline_pr = {}
    for kind, rule in rule_of_kind.items():
        pred = {rid for rid, r in dropped.items() if r == rule}
        pipeline_pr[rule] = pr(pred, by_kind.get(kind, set()))
    overall = pr(set(dropped), set(truth))
    results["pipeline"] = {"seconds": round(sec, 4), "rows_per_s": round(n / sec), "report": rep.model_dump(),
                           "per_rule": pipeline_pr, "all_noise": overall}  # fmt: skip

    # 2. Each filter alone, over every row.
    alone: dict[str, dict] = {}
    ef = ErrorFilter()
    sec_e, hits = timed(lambda: ef.check(rows), args.repeat)
    for sub in ("empty_response", "truncated", "refusal"):
        pred = {r.row_id for r, h in zip(rows, hits, strict=True) if h is not None and h.rule == sub}
        alone[sub] = {**pr(pred, by_kind[sub]), "rows_per_s": round(n / sec_e)}
    det = PIIDetector()

    def ours() -> set[str]:
        return {r.row_id for r in rows if det.find(r.prompt_text) or det.find(r.response)}

    sec_p, pred = timed(ours, args.repeat)
    alone["pii"] = {**pr(pred, by_kind["pii"]), "rows_per_s": round(n / sec_p)}
    per_kind = {}
    for kind in PII_MAKERS:
        ids = {r.row_id for r in rows if r.metadata.get("pii_kind") == kind}
        per_kind[kind] = round(len(pred & ids) / len(ids), 4)
    alone["pii"]["recall_by_kind"] = per_kind
    covered = {r.row_id for r in rows if r.metadata.get("pii_kind") not in (None, "secret")}
    alone["pii"]["recall_without_secrets"] = round(len(pred & covered) / len(covered), 4)
    df = DedupFilter(DedupRule())
    sec_d, hits = timed(lambda: df.check(rows), args.repeat)
    for sub in ("exact_duplicate", "near_duplicate"):
        pred = {r.row_id for r, h in zip(rows, hits, strict=True) if h is not None and h.rule == sub}
        alone[sub] = {**pr(pred, by_kind[sub]), "rows_per_s": round(n / sec_d)}
    both = {r.row_id for r, h in zip(rows, hits, strict=True) if h is not None}
    alone["duplicates (exact + near)"] = {**pr(both, by_kind["exact_duplicate"] | by_kind["near_duplicate"]),
                                          "rows_per_s": round(n / sec_d)}  # fmt: skip
    results["alone"] = alone

    # 3. Anchor: Presidio's rule-based recognisers on the same rows.
    recs, note = presidio_recognisers()
    anchors: dict[str, object] = {}
    if recs:
        for min_score in (0.0, 0.5):

            def pres(ms: float = min_score) -> set[str]:
                return {
                    r.row_id
                    for r in rows
                    if presidio_find(recs, r.prompt_text, ms) or presidio_find(recs, r.response, ms)
                }

            sec_pp, ppred = timed(pres, 1)
            kinds = {}
            for kind in PII_MAKERS:
                ids = {r.row_id for r in rows if r.metadata.get("pii_kind") == kind}
                kinds[kind] = round(len(ppred & ids) / len(ids), 4)
            covered = {r.row_id for r in rows if r.metadata.get("pii_kind") not in (None, "secret")}
            anchors[f"presidio (score >= {min_score})"] = {**pr(ppred, by_kind["pii"]), "rows_per_s": round(n / sec_pp),
                                                           "recall_by_kind": kinds,
                                                           "recall_without_secrets": round(len(ppred & covered) / len(covered), 4)}  # fmt: skip
        anchors["presidio_note"] = note
    else:
        anchors["presidio_error"] = note

    # 4. Anchor: datasketch MinHash LSH on the same shingles, same threshold, same keep-first order.
    try:
        from datasketch import MinHash, MinHashLSH

        def ds_dedup() -> set[str]:
            lsh = MinHashLSH(threshold=0.75, num_perm=128)
            seen: set[str] = set()
            sigs = {}
            out_ids: set[str] = set()
            for r in rows:
                text = r.prompt_text + "\n" + r.response
                k = exact_key(text)
                if k in seen:
                    out_ids.add(r.row_id)
                    continue
                seen.add(k)
                m = MinHash(num_perm=128, seed=1)
                m.update_batch([s.encode() for s in shingles(text, 4)])
                if any(m.jaccard(sigs[j]) >= 0.75 for j in lsh.query(m)):
                    out_ids.add(r.row_id)
                    continue
                lsh.insert(r.row_id, m)
                sigs[r.row_id] = m
            return out_ids

        sec_ds, dpred = timed(ds_dedup, 1)
        anchors["datasketch (exact + near)"] = {**pr(dpred, by_kind["exact_duplicate"] | by_kind["near_duplicate"]),
                                                "rows_per_s": round(n / sec_ds)}  # fmt: skip
    except ImportError as e:
        anchors["datasketch_error"] = str(e)
    results["anchors"] = anchors

    # --- report
    print(f"\nall rule filters together (pipeline, judge off): {n / sec:,.0f} rows/s "
          f"(median of {args.repeat}: {sec:.3f} s for {n:,} rows; goal >= 20,000 rows/s)")  # fmt: skip
    print(f"report: {rep.rows_in:,} in = {rep.rows_out:,} out + {rep.dropped_total:,} dropped {rep.dropped}")
    print(f"all injected noise: precision {overall['precision']:.3f} recall {overall['recall']:.3f}\n")
    print(f"{'filter':32s} {'precision':>9s} {'recall':>7s} {'tp':>5s} {'fp':>5s} {'fn':>5s} {'rows/s':>10s}")
    for name, m in {**{f"pipeline: {k}": v for k, v in pipeline_pr.items()}, **{f"alone: {k}": v for k, v in alone.items()},
                    **{k: v for k, v in anchors.items() if isinstance(v, dict)}}.items():  # fmt: skip
        rs = f"{m['rows_per_s']:>10,}" if "rows_per_s" in m else f"{'':>10s}"
        print(
            f"{name:32s} {m['precision']:9.3f} {m['recall']:7.3f} {m['tp']:5d} {m['fp']:5d} {m['fn']:5d} {rs}"
        )
    print("\nPII recall by kind, ours:", alone["pii"]["recall_by_kind"],
          "without secrets:", alone["pii"]["recall_without_secrets"])  # fmt: skip
    for k, v in anchors.items():
        if isinstance(v, dict) and "recall_by_kind" in v:
            print(
                f"PII recall by kind, {k}:",
                v["recall_by_kind"],
                "without secrets:",
                v["recall_without_secrets"],
            )
        elif isinstance(v, str):
            print(f"{k}: {v}")
    results["machine"] = {
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
    }
    results["at"] = datetime.now(UTC).isoformat(timespec="seconds")
    dest = ROOT / "bench" / "results" / f"curation-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {dest.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
