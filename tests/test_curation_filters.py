"""Curation's rule filters, each alone, on rows built here (no database, no network)."""

from __future__ import annotations

import re

import pytest

from opentracy.distillation.curation import (
    ClusterFilter,
    ClusterRule,
    CurationConfig,
    CurationRow,
    DedupFilter,
    DedupRule,
    ErrorFilter,
    ErrorsRule,
    FilterContext,
    JudgeFlaggedFilter,
    LengthFilter,
    LengthRule,
    MetadataRule,
    MetadataRuleFilter,
    PIIDetector,
    PIIFilter,
    PIIRule,
    curate_rows,
    select_for_review,
)
from opentracy.distillation.curation.filters.dedup import lsh_bands
from opentracy.distillation.curation.pii import iban_ok, luhn_ok
from opentracy.errors import InvalidInput


def row(rid: str, prompt="Where is my card?", response="card_arrival", **meta) -> CurationRow:
    return CurationRow(rid, prompt, response, meta)


def hits(f, rows, ctx=None):
    return {r.row_id: h for r, h in zip(rows, f.check(rows, ctx), strict=True) if h is not None}


# --- errors -----------------------------------------------------------------------------------------


def test_error_filter_finds_each_kind_and_names_it():
    rows = [
        row("ok"),
        row("empty", response="   "),
        row("trace", error="upstream 502"),
        row("status", status="failed"),
        row("len", finish_reason="length"),
        row("cutjson", response='{"intent": "card_arr'),
        row("fence", response="```python\nprint(1)\n"),
        row("refusal", response="I'm sorry, but I can't help with that request."),
        row("refusal2", response="As an AI language model, I cannot access your account."),
        row("fine_sorry", response="Sorry to hear that! Your card should arrive within 5 days."),
        row("json_ok", response='{"intent": "card_arrival"}'),
    ]
    got = hits(ErrorFilter(), rows)
    assert set(got) == {"empty", "trace", "status", "len", "cutjson", "fence", "refusal", "refusal2"}
    assert got["empty"].rule == "empty_response" and got["trace"].rule == "trace_error"
    assert "upstream 502" in got["trace"].reason and got["len"].rule == "truncated"
    assert got["cutjson"].reason == "truncated output (JSON cut off)"
    assert got["refusal"].rule == "refusal" and "sorry" in got["refusal"].reason.lower()
    # each check can be turned off, and extra refusal patterns added
    three = [
        row("empty", response=""),
        row("r", response="I cannot help with that"),
        row("n", response="nope."),
    ]
    got = hits(ErrorFilter(ErrorsRule(empty=False, refusal_patterns=[r"^nope\b"])), three)
    assert set(got) == {"r", "n"}
    assert (
        hits(ErrorFilter(ErrorsRule(empty=False, refusal=False, refusal_patterns=[r"^nope\b"])), three) == {}
    )


def test_bad_refusal_pattern_is_a_clear_error():
    with pytest.raises(InvalidInput, match="not a valid regular expression"):
        CurationConfig.build({"errors": {"refusal_patterns": ["(unclosed"]}})


# --- cluster ----------------------------------------------------------------------------------------


def test_off_cluster_by_id_auto_and_explicit():
    rows = [row(f"a{i}", cluster_id=34) for i in range(5)] + [row("b", cluster_id=12), row("c")]
    f = ClusterFilter()
    got = hits(f, rows)
    assert set(got) == {"b"} and f.notes()["target_cluster"] == 34
    assert got["b"].reason == "cluster 12, not the target cluster 34"
    got = hits(ClusterFilter(ClusterRule(cluster_id=12, missing="drop")), rows)
    assert set(got) == {"a0", "a1", "a2", "a3", "a4", "c"}
    # rows without any cluster id: nothing to do, and the notes say why
    f = ClusterFilter()
    assert hits(f, [row("x"), row("y")]) == {} and "no row carries" in f.notes()["skipped"]


def test_off_cluster_by_embedding_distance():
    from opentracy.testing import embedding

    class HashEmbedder:  # the mock server's word-hash embeddings: same words, close vectors
        def embed(self, texts):
            return [embedding(t, 64) for t in texts]

    card = [
        row(f"c{i}", prompt=f"my card has not arrived yet {w}", cluster_id=1) for i, w in enumerate("abcdef")
    ]
    far = row("far", prompt="what is the capital of peru and bolivia", cluster_id=1)
    f = ClusterFilter(ClusterRule(max_distance=0.6), embedder=HashEmbedder())
    got = hits(f, [*card, far])
    assert set(got) == {"far"} and got["far"].rule == "off_cluster_distance"
    assert "distance" in f.notes() and f.notes()["distance"]["max_distance"] == 0.6
    with pytest.raises(InvalidInput, match="no embedder named"):
        ClusterFilter(ClusterRule(max_distance=0.5, embedder="nope")).check(card)


# --- length -----------------------------------------------------------------------------------------


def test_length_in_characters_and_tokens():
    rows = [row("short", response="ok"), row("long", response="x" * 500), row("uni", response="é" * 150)]
    got = hits(LengthFilter(LengthRule(max_chars=300, max_tokens=None)), rows)
    assert set(got) == {"long"} and "characters > 300" in got["long"].reason
    got = hits(LengthFilter(LengthRule(max_tokens=60, field="response")), rows)
    assert set(got) == {"long", "uni"}  # 150 two-byte characters ~ 75 tokens
    assert "tokens > 60" in got["long"].reason


# --- PII --------------------------------------------------------------------------------------------

POSITIVES = {
    "email": ["write to ana.lopez+bank@example.co.uk today", "Contact: j_doe@mail.example.org"],
    "phone": [
        "call me on +44 20 7946 0958",
        "my number is (555) 123-4567",
        "ring 07700 900123",
        "+1-202-555-0143",
    ],
    "credit_card": ["card 4111 1111 1111 1111 was charged", "5500-0000-0000-0004", "my amex 378282246310005"],
    "iban": ["send it to GB82 WEST 1234 5698 7654 32", "IBAN DE89370400440532013000"],
    "national_id": ["my SSN is 123-45-6789", "NI number AB 12 34 56 C", "DNI 12345678Z"],
    "ip_address": ["login from 192.168.10.20 failed", "seen at 2001:db8::ff00:42:8329"],
    "secret": [
        "my key is sk-proj-abcdefghijklmnopqrstuvwxyz0123456789",
        "AKIAIOSFODNN7EXAMPLE in the logs",
        "token ghp_" + "a1B2" * 9,
        "password=Hunter2!xyzzy",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
    ],
}
NEGATIVES = [
    "I was charged $1,000.00 twice on 2019-05-12",
    "my card still hasn't arrived after 2 weeks",
    "order 12345 is late",
    "card 4111 1111 1111 1112",  # fails Luhn
    "GB82 WEST 1234 5698 7654 33",  # fails mod 97
    "the password is required",
    "I need 3 new cards for 4 people",
]


@pytest.mark.parametrize("kind", sorted(POSITIVES))
def test_pii_recognisers_find_each_kind(kind):
    det = PIIDetector()
    for text in POSITIVES[kind]:
        found = det.find(text)
        assert [f.kind for f in found] == [kind], (text, found)


def test_pii_recognisers_leave_look_alikes():
    det = PIIDetector()
    for text in NEGATIVES:
        assert det.find(text) == [], (text, det.find(text))
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB82WEST12345698765433")


def test_pii_drop_redact_and_flag_modes():
    rows = [
        row("clean"),
        row("mail", prompt="mail me at ana@example.com", response="sure, ana@example.com noted"),
        row("chat", prompt=[{"role": "user", "content": "my card is 4111 1111 1111 1111"}], response="ok"),
    ]
    got = hits(PIIFilter(), rows)
    assert set(got) == {"mail", "chat"} and got["mail"].reason == "contains PII: email"
    red = PIIFilter(PIIRule(action="redact"))
    got = hits(red, rows)
    assert got["mail"].edit == {"prompt": "mail me at [EMAIL]", "response": "sure, [EMAIL] noted"}
    assert got["chat"].edit["prompt"] == [{"role": "user", "content": "my card is [CREDIT_CARD]"}]
    assert red.notes()["kinds_found"] == {"email": 1, "credit_card": 1}
    assert "person names not checked" in red.notes()["person_names"]  # no NER model: said, not faked
    # only some kinds, only the response
    got = hits(PIIFilter(PIIRule(kinds=["credit_card"], fields="response")), rows)
    assert got == {}


def test_redact_mode_in_the_pipeline_keeps_the_row_masked():
    rows = [row("mail", prompt="mail me at ana@example.com"), row("ok", prompt="where is my card")]
    out = curate_rows(rows, {"judge": False, "pii": "redact", "review": False})
    assert [r.prompt for r in out.rows] == ["mail me at [EMAIL]", "where is my card"]
    assert out.rows[0].metadata["curation_flags"] == ["pii_redacted"] and out.report.redacted == 1
    assert out.report.rows_out == 2 and out.report.dropped_total == 0


# --- duplicates -------------------------------------------------------------------------------------


def test_exact_and_near_duplicates_keep_the_best_scored_copy():
    rows = [
        row("a", prompt="How do I activate my new card?"),
        row("b", prompt="how do I   activate my new card?"),  # exact after normalising case and spaces
        row("c", prompt="How do I activate my new card ??"),  # near: punctuation
        row("d", prompt="Why was my transfer declined?"),
    ]
    ctx = FilterContext(scores={"a": 0.2, "b": 0.9, "c": 0.5, "d": 0.7})
    f = DedupFilter(DedupRule(threshold=0.8))
    got = hits(f, rows, ctx)
    assert set(got) == {"a", "c"}  # b, the best of the three, stays
    assert got["a"].rule == "exact_duplicate" and got["a"].detail == {"duplicate_of": "b"}
    assert got["c"].rule == "near_duplicate" and got["c"].detail["duplicate_of"] == "b"
    assert f.notes()["groups"] == 1
    # without scores, the first copy stays
    got = hits(DedupFilter(), rows)
    assert set(got) == {"b", "c"}
    # exact only
    assert set(hits(DedupFilter(DedupRule(near=False)), rows)) == {"b"}


def test_near_duplicate_threshold_separates_similar_from_different():
    base = "I am still waiting on my card, it has been two weeks now"
    rows = [
        row("x", prompt=base),
        row("typo", prompt=base.replace("waiting", "waitng")),
        row("other", prompt="Can I top up by bank transfer from abroad?"),
    ]
    assert set(hits(DedupFilter(), rows)) == {"typo"}
    assert hits(DedupFilter(DedupRule(threshold=0.99)), rows) == {}


def test_lsh_band_choice():
    for t in (0.5, 0.7, 0.8, 0.9):
        b = lsh_bands(t, 128)
        r = 128 // b
        assert 128 % b == 0 and 1 - (1 - t**r) ** b >= 0.93


# --- user rules and judge flags ---------------------------------------------------------------------


def test_metadata_rule_expressions():
    rows = [
        row("r1", tags=["reviewed", "x"], lang="en", score=0.9, source={"kind": "trace"}),
        row("r2", tags=["x"], lang="fr", score=0.4),
        row("r3", lang="de"),
    ]
    cases = {
        'tags contains "reviewed"': {"r1"},
        "lang in ['en', 'fr'] and score >= 0.5": {"r1"},
        'not (lang == "en") or score < 0.5': {"r2", "r3"},
        "source.kind == 'trace'": {"r1"},
        "metadata.score exists": {"r1", "r2"},
        'response matches "^card_"': {"r1", "r2", "r3"},
        "score == null": {"r3"},
    }
    for expr, keep in cases.items():
        got = hits(MetadataRuleFilter(MetadataRule(keep_if=expr)), rows)
        assert {r.row_id for r in rows} - set(got) == keep, expr
    got = hits(MetadataRuleFilter(MetadataRule(name="no_fr", drop_if='lang == "fr"')), rows)
    assert set(got) == {"r2"} and got["r2"].reason == 'matches drop_if: lang == "fr"'


@pytest.mark.parametrize(
    "expr,where",
    [
        ("tags contains", "expected a value"),
        ("tags ~ 3", "cannot read"),
        ("(a == 1", "expected ')'"),
        ("a matches '('", "bad regular expression"),
        ("", "empty rule"),
    ],
)
def test_metadata_rule_mistakes_are_named(expr, where):
    with pytest.raises(InvalidInput, match=re.escape(where)):
        CurationConfig.build({"rules": [{"keep_if": expr}]})


def test_judge_flagged_rule_spares_held_and_reviewed_rows():
    rows = [
        row("low"),
        row("held"),
        row("approved", review={"status": "approved"}),
        row("err"),
        row("ok"),
        row("meta", judge_score=0.1),
    ]
    ctx = FilterContext(
        scores={"low": 0.2, "held": 0.3, "approved": 0.1, "ok": 0.9},
        flagged={
            "low": "judge score 0.20 < threshold 0.5",
            "held": "x",
            "approved": "y",
            "err": "judge_error: boom",
        },
        held=frozenset({"held"}),
    )
    f = JudgeFlaggedFilter(threshold=0.5)
    got = hits(f, rows, ctx)
    assert set(got) == {"low", "meta"}  # a score already in metadata counts when the row was not judged now
    assert f.notes()["held_for_review"] == 1 and f.notes()["kept_by_earlier_review"] == 1
    from opentracy.distillation.curation import JudgeFlaggedRule

    got = hits(JudgeFlaggedFilter(JudgeFlaggedRule(drop_errors=True), threshold=0.5), rows, ctx)
    assert got["err"].rule == "judge_error"


def test_review_selection_is_closest_to_threshold_and_skips_queued():
    rows = [row(f"r{i}") for i in range(6)]
    scores = {"r0": 0.1, "r1": 0.48, "r2": 0.55, "r3": 0.9, "r4": None, "r5": 0.5}
    got = select_for_review(rows, scores, 0.5, 3)
    assert [r.row_id for r, _ in got] == ["r5", "r1", "r2"]
    got = select_for_review(rows, scores, 0.5, 3, exclude={"r5"})
    assert [r.row_id for r, _ in got] == ["r1", "r2", "r0"]


def test_config_shortcuts_and_mistakes():
    cfg = CurationConfig.build(
        None, judge="openai/gpt-4o", threshold=0.7, pii="redact", dedup=0.9, cluster=34, review=10
    )
    assert cfg.judge.model == "openai/gpt-4o" and cfg.judge.threshold == 0.7
    assert cfg.pii.action == "redact" and cfg.dedup.threshold == 0.9 and cfg.cluster.cluster_id == 34
    assert cfg.review.size == 10
    off = CurationConfig.build({"judge": False, "pii": False, "dedup": False})
    assert not off.judge.enabled and not off.pii.enabled and not off.dedup.enabled
    custom = CurationConfig.build(
        {
            "judge": {
                "criteria": [
                    "helpfulness",
                    {"name": "cites_policy", "description": "Cites the policy.", "weight": 2},
                ]
            }
        }
    )
    assert [c.name for c in custom.judge.criteria] == ["helpfulness", "cites_policy"]
    for bad, msg in [
        ({"judge": {"threshold": 2}}, "judge.threshold"),
        ({"pii": {"kinds": ["dna"]}}, "unknown PII kind"),
        ({"judge": {"criteria": ["charm"]}}, "unknown criterion"),
        ({"judge": {"criteria": [{"name": "Bad Name", "description": "x"}]}}, "criterion name"),
        ({"nonsense": 1}, "nonsense"),
    ]:
        with pytest.raises(InvalidInput, match=msg):
            CurationConfig.build(bad)


def test_report_counts_add_up_without_a_judge():
    words = [
        "card",
        "transfer",
        "refund",
        "cash",
        "pin",
        "limit",
        "fee",
        "rate",
        "app",
        "phone",
        "visa",
        "top-up",
        "atm",
    ]
    rows = [
        row(f"r{i}", prompt=f"{words[i % 13]} {words[(i * 5 + 1) % 13]} {i}? " * 2, cluster_id=1)
        for i in range(20)
    ]
    rows += [row("dup", prompt=rows[3].prompt, cluster_id=1), row("empty", response=""),
             row("pii", prompt="my ssn is 123-45-6789", cluster_id=1), row("off", cluster_id=2)]  # fmt: skip
    out = curate_rows(rows, {"judge": False})
    rep = out.report
    assert rep.rows_in == 24 and rep.rows_in == rep.rows_out + rep.dropped_total
    assert rep.dropped == {"exact_duplicate": 1, "empty_response": 1, "pii": 1, "off_cluster": 1}
    assert rep.judge.skipped and "turned off" in rep.judge.skipped_reason
    assert {d.row.row_id: d.rule for d in out.dropped} == {"dup": "exact_duplicate", "empty": "empty_response",
                                                           "pii": "pii", "off": "off_cluster"}  # fmt: skip
    assert out.held == []  # no scores: nothing to rank for review


def test_off_cluster_distance_with_the_engines_named_embedder(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A config from the API or the CLI names its embedder: each engine resolves its local ones, bound to
    its own data directory (a second engine in the process does not take the names over)."""
    import json

    from opentracy.config import Settings
    from opentracy.distillation.curation.filters.cluster import EMBEDDERS
    from opentracy.engine import Engine

    before = dict(EMBEDDERS)
    engines = [
        Engine(
            Settings.from_env(home=tmp_path / f"home{k}", database_url=f"sqlite:///{tmp_path / f'c{k}.db'}")
        )
        for k in (1, 2)
    ]
    eng, other = engines
    try:
        assert before == EMBEDDERS  # nothing process-wide is rewritten by an engine
        made: list[object] = []
        real = eng.curation.embedders["minilm"]
        eng.curation.embedders["minilm"] = lambda: made.append(1) or real()
        other.curation.embedders["minilm"] = lambda: pytest.fail("the other engine's embedder was used")
        lines = [
            {"prompt": f"My card still has not arrived, {w}", "response": "Sorry, let me check.",
             "metadata": {"cluster_id": 1}}
            for w in ["what now?", "it has been a week", "please help", "where is it?"]
        ] + [{"row_id": "far", "prompt": "Write a haiku about the sea at night.", "response": "Waves.",
              "metadata": {"cluster_id": 1}}]  # fmt: skip
        src = tmp_path / "rows.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in lines))
        eng.datasets.upload("cards", src)
        cfg = {"judge": {"enabled": False}, "dedup": {"enabled": False}, "length": {"enabled": False},
               "cluster": {"max_distance": 0.5, "embedder": "minilm"}}  # fmt: skip
        eng.curation.curate("cards", cfg)
        assert made == [1]
        dropped = eng.curation.dropped("cards", limit=100)
        assert [(d["row_id"], d["rule"]) for d in dropped["items"]] == [("far", "off_cluster_distance")]
    finally:
        for e in engines:
            e.close()
