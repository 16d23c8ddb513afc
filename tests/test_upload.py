"""Uploads at the library level: every source format, field mapping, appending, provenance and warnings."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import segment_files, spec_rows

from opentracy.errors import InvalidInput, NotFound

# 28 rows of Banking77 train.csv (every 400th row, plus two whose text spans several lines).
# Banking77: Casanueva et al., "Efficient Intent Detection with Dual Sentence Encoders", 2020. CC BY 4.0.
BANKING77 = [
    ("I am still waiting on my card?", "card_arrival"),
    ("i need to know about exchange rates", "exchange_rate"),
    (
        "Hello. I have a transaction in my account listed as pending. I tried to use an ATM at the city centre, "
        "but the machine declined my card, and I did not receive the money. Why is the transaction still pending "
        "if I did not receive the money.",
        "pending_cash_withdrawal",
    ),
    ("I want to add money automatically when I travel.", "automatic_top_up"),
    ("I am 16 and just started working at McDonalds can I deposit my checks at your bank?", "age_limit"),
    ("My top is still pending.", "pending_top_up"),
    (
        "I attempted to withdraw some money from an ATM this morning and received the wrong amount. Your app says "
        "I have enough money available in the account. Can someone tell me what's wrong?",
        "wrong_amount_of_cash_received",
    ),
    (
        "Is there a reason a payment is showing complete on my side but the person who is receiving it has not "
        "gotten it?",
        "transfer_not_received_by_recipient",
    ),
    ("I put some money in my account the other day but now its gone? Why is this?", "top_up_reverted"),
    (
        "There is a payment with my card which i definitely did not make by me .Never seen that it before.",
        "card_payment_not_recognised",
    ),
    ("I dont have a pin", "get_physical_card"),
    ("What is the max amount of disposable cards I'm allowed.", "disposable_card_limits"),
    (
        "My accounts been charged a payment for something I didn't make.",
        "direct_debit_payment_not_recognised",
    ),
    ("I made a payment but it's still pending", "pending_card_payment"),
    (
        "I don't have any idea what's going on but all of my transfers keep getting declined. I have "
        "double-checked over all of my recipient names and they are correct.",
        "declined_transfer",
    ),
    (
        "I sent a transfer and it has been pending for awhile. How long will it stay pending?",
        "pending_transfer",
    ),
    ("I see a duplicate payment.", "transaction_charged_twice"),
    ("My payment has been returned.", "reverted_card_payment?"),
    ("Why are you charging me a transfer fee?", "transfer_fee_charged"),
    ("I need to transfer money into this account from my other bank account.", "transfer_into_account"),
    ("Where is the option to top up with a cheque?", "top_up_by_cash_or_cheque"),
    ("Please send me a disposable virtual card.", "get_disposable_virtual_card"),
    (
        "I just lost my wallet and I think someone is using my card to withdraw my money. Can you please cancel or "
        "freeze my card?!!",
        "cash_withdrawal_not_recognised",
    ),
    ("I would like to activate my card.", "activate_my_card"),
    ("Do I need to order a new card before it expires?", "card_about_to_expire"),
    ("What countries are getting support?", "country_support"),
    ("\nI can't seem to be able to use my card\n\n\n", "card_not_working"),
    (
        "\nI put the wrong pin too many times and now it is blocked. Can you help me unblock it?",
        "pin_blocked",
    ),
]


def write_banking_csv(path: Path, *, extra: bool = True) -> Path:
    """The Banking77 slice as a CSV (csv module defaults: CRLF line ends, quoted multi-line fields)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "category", "source", "split"] if extra else ["text", "category"])
        for text, cat in BANKING77:
            w.writerow([text, cat, "banking77", "train"] if extra else [text, cat])
    return path


def dump(rows) -> list[dict]:
    return [r.model_dump() for r in rows]


def all_rows(engine, name: str, version=None) -> list[dict]:
    return dump(engine.datasets.iter_rows(name, version))


def upload_steps(info) -> list[dict]:
    return [p for p in info.provenance if p.get("kind") == "upload"]


@pytest.fixture(autouse=True)
def _quiet_hf():
    import datasets

    datasets.disable_progress_bars()


# ---------------------------------------------------------------------------------------------------
# spec-format JSONL


def test_spec_jsonl_with_row_ids_keeps_every_field_and_the_order(engine, write_jsonl):
    rows = spec_rows(40)
    res = engine.datasets.upload("tickets", write_jsonl(rows))
    assert res.format == "jsonl" and res.rows_added == 40 and res.skipped == 0 and res.skipped_items == []
    assert res.dataset == "tickets"
    assert (
        res.version.label == "tickets-v1" and res.version.status == "active" and res.version.row_count == 40
    )
    assert all_rows(engine, "tickets") == rows
    assert len(segment_files(engine)) == 1


def test_generated_row_ids_are_unique_stable_and_deterministic(engine, write_jsonl):
    rows = [{"prompt": f"question {i}", "response": "billing"} for i in range(30)]
    rows[3]["row_id"] = "mine-3"
    rows[20]["row_id"] = "mine-20"
    path = write_jsonl(rows)
    engine.datasets.upload("gen", path)
    got = all_rows(engine, "gen")
    ids = [r["row_id"] for r in got]
    assert [r["prompt"] for r in got] == [r["prompt"] for r in rows]
    assert ids[3] == "mine-3" and ids[20] == "mine-20"
    generated = [i for n, i in enumerate(ids) if n not in (3, 20)]
    assert all(re.fullmatch(r"r_[0-9a-f]{16}", i) for i in generated), generated
    assert len(set(ids)) == 30

    # Deterministic: a generated id is a function of the dataset and the row's position, nothing random,
    # so a retried upload (a resumed job) produces the same ids.
    ds_id = engine.datasets.get("gen").id
    for rb in engine.datasets.iter_arrow("gen", columns="row_id, ord"):
        for rid, ordv in zip(rb.column(0).to_pylist(), rb.column(1).to_pylist(), strict=True):
            if not rid.startswith("mine-"):
                assert rid == "r_" + hashlib.md5(f"{ds_id}:{ordv}".encode()).hexdigest()[:16]

    # Stable: the same ids on every read, after freezing, and in the next version.
    assert [r["row_id"] for r in all_rows(engine, "gen")] == ids
    engine.datasets.freeze("gen")
    engine.datasets.new_version("gen")
    assert [r["row_id"] for r in all_rows(engine, "gen", 1)] == ids
    assert [r["row_id"] for r in all_rows(engine, "gen", 2)] == ids

    # The same file again (no explicit ids this time) appends rows with new ids that clash with none.
    res = engine.datasets.upload(
        "gen", write_jsonl([{k: v for k, v in r.items() if k != "row_id"} for r in rows], "again.jsonl")
    )
    assert res.version.number == 2 and res.rows_added == 30
    ids2 = [r["row_id"] for r in all_rows(engine, "gen", 2)]
    assert ids2[:30] == ids and len(set(ids2)) == 60


def test_prompt_as_a_list_of_chat_messages(engine, write_jsonl):
    msgs = [
        {"role": "system", "content": "You classify support tickets."},
        {"role": "user", "content": "Ticket: Where can I download my invoice for March?"},
    ]
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is on this invoice?"}]}]
    rows = [
        {"row_id": "a", "prompt": msgs, "response": "billing", "metadata": {"tags": ["chat"]}},
        {"row_id": "b", "prompt": "a plain prompt", "response": "technical", "metadata": {}},
        {"row_id": "c", "prompt": parts, "response": "billing", "metadata": {}},
    ]
    res = engine.datasets.upload("chat", write_jsonl(rows))
    assert res.format == "jsonl" and res.rows_added == 3
    assert all_rows(engine, "chat") == rows
    assert engine.datasets.get_row("chat", "a").prompt == msgs


# ---------------------------------------------------------------------------------------------------
# OpenAI fine-tuning chat JSONL

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_order_status",
            "description": "Look up an order",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string"}},
                "required": ["order_id"],
            },
        },
    }
]

OPENAI_RECORDS = [
    {
        "messages": [
            {"role": "system", "content": "Marv is a factual chatbot that is also sarcastic. ✓ ünïcode"},
            {"role": "user", "content": "What's the capital of France?"},
            {"role": "assistant", "content": "Paris, as if everyone doesn't know that already.", "weight": 0},
            {"role": "user", "content": "Can you be more sarcastic?"},
            {"role": "assistant", "content": "Paris, as if everyone doesn't know that already.", "weight": 1},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Where is order 42?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_order_status", "arguments": '{"order_id": "42"}'},
                    }
                ],
            },
        ],
        "tools": TOOLS,
        "parallel_tool_calls": False,
    },
    {
        "messages": [
            {"role": "developer", "content": "Answer in one word."},
            {"role": "user", "content": [{"type": "text", "text": "Colour of the sky?"}]},
            {"role": "assistant", "content": "Blue", "weight": 1},
        ],
        "tools": TOOLS,
        "custom_score": 0.1,
        "big_int": 12345678901234567,
    },
]


def test_openai_chat_jsonl_round_trips_without_loss(engine, write_jsonl, tmp_path):
    path = write_jsonl(OPENAI_RECORDS, "chat.jsonl")
    res = engine.datasets.upload("marv", path)
    assert res.format == "openai" and res.rows_added == 3

    rows = all_rows(engine, "marv")
    # the prompt is every message but the last; the response is the last (assistant) message's content
    assert rows[0]["prompt"] == OPENAI_RECORDS[0]["messages"][:-1]
    assert rows[0]["response"] == "Paris, as if everyone doesn't know that already."
    assert rows[1]["response"] == ""  # a tool-call answer has no text
    assert rows[2]["prompt"][1]["content"] == [{"type": "text", "text": "Colour of the sky?"}]

    out = tmp_path / "export.jsonl"
    assert engine.datasets.export("marv", None, "openai", out) == 3
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == OPENAI_RECORDS


def test_openai_format_named_explicitly_and_reuploaded_export_is_identical(engine, write_jsonl, tmp_path):
    path = write_jsonl(OPENAI_RECORDS, "chat.data")  # the name says nothing: the format does
    res = engine.datasets.upload("marv", path, format="openai")
    assert res.format == "openai" and res.rows_added == 3
    first = tmp_path / "first.jsonl"
    engine.datasets.export("marv", None, "openai", first)
    engine.datasets.upload("marv2", first)
    second = tmp_path / "second.jsonl"
    engine.datasets.export("marv2", None, "openai", second)
    assert [json.loads(x) for x in second.read_text().splitlines()] == OPENAI_RECORDS


# ---------------------------------------------------------------------------------------------------
# CSV


def test_csv_banking77_with_field_mapping(engine, tmp_path):
    path = write_banking_csv(tmp_path / "banking77.csv")
    res = engine.datasets.upload("banking", path, prompt_field="text", response_field="category")
    assert res.format == "csv" and res.rows_added == len(BANKING77) and res.skipped == 0
    rows = all_rows(engine, "banking")
    # text is kept exactly, including the newlines inside quoted fields
    assert [(r["prompt"], r["response"]) for r in rows] == BANKING77
    # every other column goes into metadata by default
    assert all(r["metadata"] == {"source": "banking77", "split": "train"} for r in rows)
    step = upload_steps(res.version)[-1]
    assert step["options"] == {"prompt_field": "text", "response_field": "category"}


def test_csv_metadata_fields_selects_columns(engine, tmp_path):
    path = write_banking_csv(tmp_path / "banking77.csv")
    engine.datasets.upload("none", path, prompt_field="text", response_field="category", metadata_fields=[])
    assert all(r["metadata"] == {} for r in all_rows(engine, "none"))
    engine.datasets.upload(
        "some", path, prompt_field="text", response_field="category", metadata_fields=["split"]
    )
    assert all(r["metadata"] == {"split": "train"} for r in all_rows(engine, "some"))
    assert [(r["prompt"], r["response"]) for r in all_rows(engine, "some")] == BANKING77


def test_csv_with_spec_columns_and_json_metadata(engine, tmp_path):
    path = tmp_path / "spec.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row_id", "prompt", "response", "metadata"])
        w.writerow(
            ["t1", 'He said "hi", then left', "billing", json.dumps({"cluster_id": 34, "tags": ["a"]})]
        )
        w.writerow(["", "no id here", "technical", ""])
    engine.datasets.upload("speccsv", path)
    rows = all_rows(engine, "speccsv")
    assert rows[0] == {
        "row_id": "t1",
        "prompt": 'He said "hi", then left',
        "response": "billing",
        "metadata": {"cluster_id": 34, "tags": ["a"]},
    }
    assert (
        rows[1]["row_id"].startswith("r_") and rows[1]["metadata"] == {} and rows[1]["prompt"] == "no id here"
    )


# ---------------------------------------------------------------------------------------------------
# Parquet


def test_parquet_upload_with_string_and_message_prompts(engine, tmp_path):
    msg_type = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    table = pa.table(
        {
            "row_id": ["p1", "p2", "p3"],
            "question": ["How do I reset my PIN?", "Card not working", "Top up failed"],
            "label": ["pin_blocked", "card_not_working", "top_up_failed"],
            "lang": ["en", "en", "de"],
            "metadata": pa.array(
                [{"cluster_id": 3, "tags": ["x"]}, {"cluster_id": 3, "tags": None}, None],
                pa.struct([("cluster_id", pa.int64()), ("tags", pa.list_(pa.string()))]),
            ),
        }
    )
    path = tmp_path / "tickets.parquet"
    pq.write_table(table, path)
    res = engine.datasets.upload("pq", path, prompt_field="question", response_field="label")
    assert res.format == "parquet" and res.rows_added == 3
    assert all_rows(engine, "pq") == [
        {"row_id": "p1", "prompt": "How do I reset my PIN?", "response": "pin_blocked",
         "metadata": {"cluster_id": 3, "tags": ["x"], "lang": "en"}},
        {"row_id": "p2", "prompt": "Card not working", "response": "card_not_working",
         "metadata": {"cluster_id": 3, "lang": "en"}},
        {"row_id": "p3", "prompt": "Top up failed", "response": "top_up_failed", "metadata": {"lang": "de"}},
    ]  # fmt: skip

    chat = pa.table(
        {
            "prompt": pa.array(
                [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]], msg_type
            ),
            "response": ["Hello"],
        }
    )
    pq.write_table(chat, tmp_path / "chat.parquet")
    engine.datasets.upload("pqchat", tmp_path / "chat.parquet")
    row = all_rows(engine, "pqchat")[0]
    assert row["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert row["response"] == "Hello" and row["metadata"] == {}


def test_parquet_export_reuploaded_gives_identical_rows(engine, write_jsonl, tmp_path):
    rows = spec_rows(25)
    rows[4]["prompt"] = [
        {"role": "system", "content": "Classify."},
        {"role": "user", "content": "Ticket: refund?"},
    ]
    rows[7]["metadata"] = {}
    engine.datasets.upload("orig", write_jsonl(rows))
    out = tmp_path / "orig.parquet"
    assert engine.datasets.export("orig", None, "parquet", out) == 25
    res = engine.datasets.upload("copy", out)
    assert res.format == "parquet" and res.rows_added == 25
    assert all_rows(engine, "copy") == all_rows(engine, "orig") == rows
    a, b = engine.datasets.freeze("orig"), engine.datasets.freeze("copy")
    assert a.content_hash == b.content_hash


# ---------------------------------------------------------------------------------------------------
# Hugging Face folders


def _hf_rows(prefix: str, n: int) -> dict[str, list]:
    texts = [t for t, _ in BANKING77]
    cats = [c for _, c in BANKING77]
    return {
        "prompt": [f"{prefix}: {texts[i % len(texts)]}" for i in range(n)],
        "response": [cats[i % len(cats)] for i in range(n)],
        "source": ["banking77"] * n,
    }


def test_hf_save_to_disk_dataset(engine, tmp_path):
    import datasets

    data = _hf_rows("train", 12)
    datasets.Dataset.from_dict(data).save_to_disk(str(tmp_path / "hf"))
    res = engine.datasets.upload("hf", tmp_path / "hf")
    assert res.format == "hf" and res.rows_added == 12
    rows = all_rows(engine, "hf")
    assert [r["prompt"] for r in rows] == data["prompt"]
    assert [r["response"] for r in rows] == data["response"]
    assert all(r["metadata"] == {"source": "banking77"} for r in rows)
    assert upload_steps(res.version)[-1]["split"] == "train"


def test_hf_dataset_dict_split_selection(engine, tmp_path):
    import datasets

    train, test = _hf_rows("train", 10), _hf_rows("test", 4)
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(train), "test": datasets.Dataset.from_dict(test)}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    res = engine.datasets.upload("dd-test", tmp_path / "dd", split="test")
    assert res.format == "hf" and res.rows_added == 4
    assert [r["prompt"] for r in all_rows(engine, "dd-test")] == test["prompt"]
    assert upload_steps(res.version)[-1]["split"] == "test"
    # without split=, "train" is taken
    res = engine.datasets.upload("dd-train", tmp_path / "dd")
    assert res.rows_added == 10 and [r["prompt"] for r in all_rows(engine, "dd-train")] == train["prompt"]


def test_hf_chat_dataset_with_messages_column(engine, tmp_path):
    import datasets

    recs = [
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "u"},
                {"role": "assistant", "content": "a"},
            ]
        },
        {"messages": [{"role": "user", "content": "u2"}, {"role": "assistant", "content": "a2"}]},
    ]
    datasets.Dataset.from_list(recs).save_to_disk(str(tmp_path / "chat"))
    engine.datasets.upload("hfchat", tmp_path / "chat")
    rows = all_rows(engine, "hfchat")
    assert [r["prompt"] for r in rows] == [recs[0]["messages"][:-1], recs[1]["messages"][:-1]]
    assert [r["response"] for r in rows] == ["a", "a2"]


def test_plain_folder_of_parquet_split_files(engine, tmp_path):
    folder = tmp_path / "hub"
    folder.mkdir()
    train, test = _hf_rows("train", 9), _hf_rows("test", 3)
    pq.write_table(pa.table(train), folder / "train-00000-of-00001.parquet")
    pq.write_table(pa.table(test), folder / "test-00000-of-00001.parquet")
    res = engine.datasets.upload("hub-test", folder, split="test")
    assert res.rows_added == 3 and [r["prompt"] for r in all_rows(engine, "hub-test")] == test["prompt"]
    res = engine.datasets.upload("hub-train", folder)
    assert res.rows_added == 9 and [r["prompt"] for r in all_rows(engine, "hub-train")] == train["prompt"]
    # a folder with parquet files is a dataset folder whether format= says parquet or hf
    res = engine.datasets.upload("hub-pq", folder, format="parquet", split="test")
    assert res.rows_added == 3


# ---------------------------------------------------------------------------------------------------
# field mapping and unknown keys


def test_jsonl_field_mapping(engine, write_jsonl):
    rows = [
        {"question": f"q{i}", "answer": f"a{i}", "lang": "en", "internal": i, "metadata": {"tags": ["t"]}}
        for i in range(5)
    ]
    path = write_jsonl(rows)
    res = engine.datasets.upload(
        "mapped", path, prompt_field="question", response_field="answer", metadata_fields=["lang"]
    )
    got = all_rows(engine, "mapped")
    assert [(r["prompt"], r["response"]) for r in got] == [(f"q{i}", f"a{i}") for i in range(5)]
    assert all(r["metadata"] == {"tags": ["t"], "lang": "en"} for r in got)
    assert upload_steps(res.version)[-1]["options"]["metadata_fields"] == ["lang"]

    engine.datasets.upload("mapped-all", path, prompt_field="question", response_field="answer")
    got = all_rows(engine, "mapped-all")
    assert [r["metadata"] for r in got] == [{"tags": ["t"], "lang": "en", "internal": i} for i in range(5)]


def test_a_metadata_field_no_record_has_is_an_error(engine, tmp_path, write_jsonl):
    # A typo in metadata_fields used to drop the field without a word: every row came without it.
    rows = [{"q": f"q{i}", "a": "x", **({"lang": "en"} if i == 3 else {})} for i in range(5)]
    path = write_jsonl(rows)
    kw = {"prompt_field": "q", "response_field": "a"}
    with pytest.raises(
        InvalidInput, match=r"^rows\.jsonl: no record has the field 'langg' named in metadata_fields"
    ):
        engine.datasets.upload("x", path, metadata_fields=["lang", "langg"], **kw)
    with pytest.raises(InvalidInput, match="no record has the field 'langg'"):
        engine.datasets.upload("x", path, metadata_fields=["langg"], on_error="skip", **kw)
    res = engine.datasets.upload(
        "x", path, metadata_fields=["lang"], **kw
    )  # in one record of five: kept there
    assert [r["metadata"] for r in all_rows(engine, "x")] == [{}, {}, {}, {"lang": "en"}, {}]
    assert res.rows_added == 5
    # columnar sources say so before reading a row, naming the columns there are
    (tmp_path / "t.csv").write_text("q,a,src\nhi,yo,web\n")
    with pytest.raises(
        InvalidInput, match=r"^t\.csv, line 1: no column 'srcc' for metadata_fields \(columns: q, a, src\)"
    ):
        engine.datasets.upload("y", tmp_path / "t.csv", metadata_fields=["srcc"], **kw)
    pq.write_table(pa.table({"q": ["hi"], "a": ["yo"], "src": ["web"]}), tmp_path / "t.parquet")
    with pytest.raises(
        InvalidInput, match=r"^t\.parquet: no column 'srcc' for metadata_fields \(columns: q, a, src\)"
    ):
        engine.datasets.upload("y", tmp_path / "t.parquet", metadata_fields=["srcc"], **kw)
    with pytest.raises(NotFound):
        engine.datasets.get("y")
    assert engine.datasets.upload("y", tmp_path / "t.parquet", metadata_fields=["src"], **kw).rows_added == 1


def test_unknown_top_level_keys_land_in_metadata(engine, write_jsonl):
    rows = spec_rows(3)
    rows[1] = {**rows[1], "source": "zendesk", "priority": 2, "extra": {"nested": [1, 2]}}
    engine.datasets.upload("extra", write_jsonl(rows))
    got = all_rows(engine, "extra")
    assert got[0] == rows[0] and got[2] == rows[2]
    assert got[1]["metadata"] == {
        **rows[1]["metadata"],
        "source": "zendesk",
        "priority": 2,
        "extra": {"nested": [1, 2]},
    }
    assert set(got[1]) == {"row_id", "prompt", "response", "metadata"}


# ---------------------------------------------------------------------------------------------------
# appending and versions


def test_upload_into_existing_dataset_appends_to_active_version(engine, write_jsonl):
    first, second = spec_rows(10), spec_rows(15)[10:]
    engine.datasets.upload("tickets", write_jsonl(first, "a.jsonl"))
    res = engine.datasets.upload("tickets", write_jsonl(second, "b.jsonl"))
    assert res.rows_added == 5 and res.version.number == 1 and res.version.row_count == 15
    assert len(engine.datasets.versions("tickets")) == 1
    assert all_rows(engine, "tickets") == first + second
    assert [p["file"] for p in upload_steps(res.version)] == ["a.jsonl", "b.jsonl"]


def test_upload_into_created_empty_dataset_uses_v1(engine, write_jsonl):
    engine.datasets.create("fresh", "made first")
    res = engine.datasets.upload("fresh", write_jsonl(spec_rows(3)))
    assert res.version.label == "fresh-v1" and res.version.row_count == 3
    assert engine.datasets.get("fresh").description == "made first"


def test_upload_into_frozen_dataset_creates_next_version(engine, write_jsonl):
    first, second = spec_rows(10), spec_rows(14)[10:]
    engine.datasets.upload("tickets", write_jsonl(first, "a.jsonl"))
    v1 = engine.datasets.freeze("tickets")
    res = engine.datasets.upload("tickets", write_jsonl(second, "b.jsonl"))
    v2 = res.version
    assert v2.number == 2 and v2.status == "active" and v2.parent == "tickets-v1" and v2.row_count == 14
    assert res.rows_added == 4
    assert all_rows(engine, "tickets", 2) == first + second
    # the frozen parent is untouched
    again = engine.datasets.version("tickets", 1)
    assert again.status == "frozen" and again.row_count == 10 and again.content_hash == v1.content_hash
    assert all_rows(engine, "tickets", 1) == first
    kinds = [p["kind"] for p in v2.provenance]
    assert kinds[-2:] == ["new_version", "upload"]
    assert v2.provenance[-2]["parent"] == "tickets-v1" and v2.provenance[-2]["parent_hash"] == v1.content_hash


# ---------------------------------------------------------------------------------------------------
# provenance


def test_provenance_records_file_hash_format_and_rows(engine, write_jsonl, tmp_path):
    path = write_jsonl(spec_rows(1000), "tickets.jsonl")  # > 64 KiB: hashed over several chunks
    assert path.stat().st_size > 3 * (64 << 10)
    res = engine.datasets.upload("tickets", path)
    want = hashlib.sha256(path.read_bytes()).hexdigest()
    assert res.file == "tickets.jsonl" and res.sha256 == want
    step = upload_steps(res.version)[-1]
    assert step["file"] == "tickets.jsonl" and step["sha256"] == want
    assert step["format"] == "jsonl" and step["rows"] == 1000 and step["skipped"] == 0
    assert step["at"]

    csv_path = write_banking_csv(tmp_path / "banking77.csv")
    res = engine.datasets.upload("banking", csv_path, prompt_field="text", response_field="category")
    step = upload_steps(res.version)[-1]
    assert step["sha256"] == res.sha256 == hashlib.sha256(csv_path.read_bytes()).hexdigest()
    assert step["format"] == "csv" and step["rows"] == len(BANKING77) and step["file"] == "banking77.csv"

    pq_path = tmp_path / "rows.parquet"
    engine.datasets.export("tickets", None, "parquet", pq_path)
    res = engine.datasets.upload("fromparquet", pq_path)
    step = upload_steps(res.version)[-1]
    assert step["sha256"] == res.sha256 == hashlib.sha256(pq_path.read_bytes()).hexdigest()
    assert step["format"] == "parquet" and step["rows"] == 1000 and step["file"] == "rows.parquet"


def test_provenance_hash_of_file_without_trailing_newline(engine, tmp_path):
    path = tmp_path / "nonl.jsonl"
    path.write_bytes(b'{"prompt": "a", "response": "x"}\n{"prompt": "b", "response": "y"}')
    res = engine.datasets.upload("nonl", path)
    assert res.rows_added == 2 and [r["prompt"] for r in all_rows(engine, "nonl")] == ["a", "b"]
    assert res.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------
# warnings (the spec's "common mistakes")


def codes(info) -> list[str]:
    return sorted(w.code for w in info.warnings)


def test_single_cluster_250_rows_only_not_curated(engine, write_jsonl):
    res = engine.datasets.upload("tickets", write_jsonl(spec_rows(250)))
    assert codes(res.version) == ["not_curated"]
    assert codes(engine.datasets.version("tickets")) == ["not_curated"]
    v = engine.datasets.add_provenance("tickets", {"kind": "curation", "judge": "openai/gpt-4o-mini"})
    assert codes(v) == []


def test_too_few_rows(engine, write_jsonl):
    res = engine.datasets.upload("small", write_jsonl(spec_rows(199)))
    assert codes(res.version) == ["not_curated", "too_few_rows"]
    res = engine.datasets.upload("small", write_jsonl(spec_rows(200)[199:], "one.jsonl"))
    assert res.version.row_count == 200 and codes(res.version) == ["not_curated"]


def test_mixed_clusters_in_one_upload(engine, write_jsonl):
    rows = spec_rows(150, cluster_id=34) + [
        {**r, "row_id": r["row_id"] + "-sql"} for r in spec_rows(150, cluster_id=12)
    ]
    res = engine.datasets.upload("mixed", write_jsonl(rows))
    assert codes(res.version) == ["mixed_clusters", "not_curated"]
    msg = next(w.message for w in res.version.warnings if w.code == "mixed_clusters")
    assert "2 clusters" in msg and "12" in msg and "34" in msg


def test_mixed_clusters_across_appends_and_string_ids(engine, write_jsonl):
    engine.datasets.upload("t", write_jsonl(spec_rows(250), "a.jsonl"))
    extra = [{"prompt": "SELECT?", "response": "sql", "metadata": {"cluster_id": "sql-gen"}}]
    res = engine.datasets.upload("t", write_jsonl(extra, "b.jsonl"))
    assert codes(res.version) == ["mixed_clusters", "not_curated"]
    # freezing recounts from the rows and finds the same two clusters
    assert codes(engine.datasets.freeze("t")) == ["mixed_clusters", "not_curated"]


def test_rows_without_cluster_ids_do_not_warn_about_clusters(engine, write_jsonl):
    res = engine.datasets.upload("nocl", write_jsonl(spec_rows(210, cluster_id=None)))
    assert codes(res.version) == ["not_curated"]


def test_cluster_ids_from_csv_column(engine, tmp_path):
    path = tmp_path / "clusters.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "category", "cluster_id"])
        for i, (text, cat) in enumerate(BANKING77):
            w.writerow([text, cat, "card" if i < 20 else "pin"])
    res = engine.datasets.upload("cl", path, prompt_field="text", response_field="category")
    assert codes(res.version) == ["mixed_clusters", "not_curated", "too_few_rows"]


def test_hf_folder_provenance_names_folder_and_split_and_hashes_its_files(engine, tmp_path):
    import hashlib

    import datasets

    data = {"prompt": [f"q{i}" for i in range(5)], "response": ["a"] * 5}
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(data), "test": datasets.Dataset.from_dict(data)}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    res = engine.datasets.upload("hfprov", tmp_path / "dd", split="test")
    step = res.version.provenance[-1]
    assert step["file"] == "dd[test]" and step["split"] == "test"
    h = hashlib.sha256()
    for f in sorted((tmp_path / "dd" / "test").glob("*.arrow")):
        h.update(f.read_bytes())
    assert step["sha256"] == h.hexdigest()
