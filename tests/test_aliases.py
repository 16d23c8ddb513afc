"""Aliases: create, repoint, resolve (chains, cycles, unknown names), history; through the core, HTTP,
the client and the CLI. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from click.testing import CliRunner

from opentracy.cli import main
from opentracy.engine import Engine
from opentracy.errors import Conflict, InvalidInput, NotFound

CLEAN_ENV = {"OPENTRACY_API_KEY": None, "OPENTRACY_URL": None, "COLUMNS": "120", "USER": "cli-user"}


def test_create_repoint_resolve_and_history(engine: Engine) -> None:
    al = engine.aliases
    before = datetime.now(UTC) - timedelta(seconds=5)
    a = al.set("ticket-classifier", "openai/gpt-4o", by="ana", reason="baseline")
    assert (a.name, a.target) == ("ticket-classifier", "openai/gpt-4o")
    assert al.resolve("ticket-classifier") == ("openai/gpt-4o", "ticket-classifier")

    al.set(
        "ticket-classifier", "local/ticket-student-v3", by="bo", reason="distilled student: 94% at 1/20 cost"
    )
    assert al.resolve("ticket-classifier") == ("local/ticket-student-v3", "ticket-classifier")

    hist = al.history("ticket-classifier")
    assert [(h["action"], h["old_target"], h["new_target"], h["by"], h["reason"]) for h in hist] == [
        ("create", None, "openai/gpt-4o", "ana", "baseline"),
        ("repoint", "openai/gpt-4o", "local/ticket-student-v3", "bo", "distilled student: 94% at 1/20 cost"),
    ]
    after = datetime.now(UTC) + timedelta(seconds=5)
    assert all(before <= h["at"] <= after for h in hist)  # when (timezone-aware on both databases)
    assert hist[0]["at"] <= hist[1]["at"]

    info = al.get("ticket-classifier")
    assert info.target == "local/ticket-student-v3" and info.resolved == "local/ticket-student-v3"
    assert [h.action for h in info.history or []] == ["create", "repoint"]
    assert info.created_at <= info.updated_at

    # the same target again is not a change: nothing is recorded
    al.set("ticket-classifier", "local/ticket-student-v3", by="bo")
    assert len(al.history("ticket-classifier")) == 2
    assert [x.name for x in al.list()] == ["ticket-classifier"]


def test_model_strings_pass_through(engine: Engine) -> None:
    al = engine.aliases
    assert al.resolve("openai/gpt-4o-mini") == ("openai/gpt-4o-mini", None)
    # a string with "/" is never an alias, even if an alias has the provider's name
    al.set("openai", "anthropic/claude-3-5-haiku-latest")
    assert al.resolve("openai/gpt-4o") == ("openai/gpt-4o", None)
    assert al.resolve("openai") == ("anthropic/claude-3-5-haiku-latest", "openai")


def test_chain_and_cycles(engine: Engine) -> None:
    al = engine.aliases
    al.set("base", "openai/gpt-4o")
    al.set("mid", "base")
    al.set("top", "mid")
    assert al.resolve("top") == ("openai/gpt-4o", "top")
    assert al.get("top").resolved == "openai/gpt-4o"
    al.set("base", "openai/gpt-4.1")  # repointing the end of the chain moves everything on it
    assert al.resolve("top") == ("openai/gpt-4.1", "top")

    with pytest.raises(InvalidInput, match=r"alias cycle: base → top → mid → base"):
        al.set("base", "top")
    with pytest.raises(InvalidInput, match="alias cycle: self → self"):
        al.set("self", "self")
    assert al.resolve("top") == ("openai/gpt-4.1", "top")  # a refused change changed nothing
    assert [h["action"] for h in al.history("base")] == ["create", "repoint"]


def test_cycle_in_stored_data_is_detected(engine: Engine) -> None:
    """A cycle can only be stored behind the service's back; resolve still names it instead of looping."""
    from opentracy.store.tables import AliasRecord

    with engine.catalog.session() as s:
        s.add_all([AliasRecord(name="a", target="b"), AliasRecord(name="b", target="a")])
    with pytest.raises(InvalidInput, match="alias cycle: a → b → a"):
        engine.aliases.resolve("a")
    assert engine.aliases.get("a").resolved is None


def test_unknown_and_invalid(engine: Engine) -> None:
    al = engine.aliases
    with pytest.raises(NotFound, match="not a model string provider/model .* and not an alias"):
        al.resolve("gpt-4o")
    with pytest.raises(NotFound, match="no alias 'nope'"):
        al.get("nope")
    with pytest.raises(NotFound):
        al.history("nope")
    with pytest.raises(NotFound):
        al.delete("nope")
    with pytest.raises(InvalidInput, match="not a model string provider/model .* and not an alias"):
        al.set("x", "no-such-alias")
    for bad_target in ("openai/", "/gpt-4o", "openai/gpt 4o", "", "a b"):
        with pytest.raises(InvalidInput, match="invalid target"):
            al.set("x", bad_target)
    for bad_name in ("", "a/b", "-x", "has space", "x" * 201):
        with pytest.raises(InvalidInput, match="invalid alias name"):
            al.set(bad_name, "openai/gpt-4o")
    assert al.list() == []
    # model strings in the shapes providers use
    for ok in ("together/meta-llama/Llama-3.3-70B-Instruct-Turbo", "ollama/llama3:8b", "local/student-v1"):
        al.set("ok", ok)
        assert al.resolve("ok") == (ok, "ok")


def test_delete_is_recorded_and_protects_chains(engine: Engine) -> None:
    al = engine.aliases
    al.set("prod", "openai/gpt-4o", by="ana")
    al.set("front", "prod")
    with pytest.raises(Conflict, match="target of 'front'"):
        al.delete("prod")
    al.delete("front", by="ana", reason="unused")
    al.delete("prod", by="bo", reason="retired")
    with pytest.raises(NotFound):
        al.get("prod")
    with pytest.raises(NotFound, match="not an alias"):
        al.resolve("prod")
    hist = al.history("prod")  # the history outlives the alias
    assert [(h["action"], h["old_target"], h["new_target"], h["by"], h["reason"]) for h in hist] == [
        ("create", None, "openai/gpt-4o", "ana", None),
        ("delete", "openai/gpt-4o", None, "bo", "retired"),
    ]
    al.set("prod", "openai/gpt-4.1", by="cy")  # created again: the history continues
    assert [h["action"] for h in al.history("prod")] == ["create", "delete", "create"]


def test_http_api(server) -> None:
    with httpx.Client(base_url=server.url) as h:
        r = h.put("/v1/aliases/clf", json={"target": "openai/gpt-4o", "reason": "first", "by": "ana"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["target"] == "openai/gpt-4o" and body["resolved"] == "openai/gpt-4o"
        assert body["history"][0]["by"] == "ana" and body["history"][0]["reason"] == "first"
        h.put("/v1/aliases/clf", json={"target": "openai/gpt-4o-mini"})
        got = h.get("/v1/aliases/clf").json()
        assert [x["new_target"] for x in got["history"]] == ["openai/gpt-4o", "openai/gpt-4o-mini"]
        assert [x["name"] for x in h.get("/v1/aliases").json()["items"]] == ["clf"]

        r = h.get("/v1/aliases/missing")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = h.put("/v1/aliases/a%2Fb", json={"target": "openai/gpt-4o"})
        assert r.status_code == 422 and "invalid alias name" in r.json()["error"]["message"]
        r = h.put("/v1/aliases/x", json={"target": "gpt-4o"})
        assert r.status_code == 422 and "not an alias" in r.json()["error"]["message"]
        r = h.put("/v1/aliases/x", json={})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"

        r = h.delete("/v1/aliases/clf", params={"reason": "done", "by": "bo"})
        assert r.status_code == 204
        assert h.get("/v1/aliases/clf").status_code == 404
        hist = h.get("/v1/aliases/clf/history").json()["items"]
        assert hist[-1]["action"] == "delete" and hist[-1]["reason"] == "done" and hist[-1]["by"] == "bo"


def test_client(client, engine: Engine) -> None:
    a = client.set_alias("clf", "openai/gpt-4o", reason="baseline", by="ana")
    assert (a.name, a.target, a.resolved) == ("clf", "openai/gpt-4o", "openai/gpt-4o")
    client.set_alias("clf-prod", "clf")
    got = client.get_alias("clf-prod")
    assert got.target == "clf" and got.resolved == "openai/gpt-4o"
    assert [x.name for x in client.list_aliases()] == ["clf", "clf-prod"]
    assert engine.aliases.resolve("clf-prod") == ("openai/gpt-4o", "clf-prod")  # same catalog as the core
    with pytest.raises(Conflict):
        client.delete_alias("clf")
    client.delete_alias("clf-prod", reason="gone")
    with pytest.raises(NotFound):
        client.get_alias("clf-prod")
    hist = client.alias_history("clf-prod")
    assert [h["action"] for h in hist] == ["create", "delete"] and hist[1]["reason"] == "gone"
    with pytest.raises(InvalidInput, match="alias cycle"):
        client.set_alias("clf", "clf")


def test_cli(server) -> None:
    def run(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, ["--url", server.url, "aliases", *args], env=CLEAN_ENV)

    r = run("set", "ticket-classifier", "openai/gpt-4o", "--reason", "baseline")
    assert r.exit_code == 0, r.output
    assert r.stdout == "ticket-classifier → openai/gpt-4o\n"
    r = run("set", "tc", "ticket-classifier")
    assert r.stdout == "tc → ticket-classifier  (resolves to openai/gpt-4o)\n"
    assert (
        run("set", "ticket-classifier", "local/student-v3", "--reason", "cheaper", "--by", "bo").exit_code
        == 0
    )

    r = run("list")
    assert r.exit_code == 0 and "ticket-classifier" in r.stdout and "local/student-v3" in r.stdout
    items = json.loads(run("list", "--json").stdout)
    assert {(x["name"], x["target"]) for x in items} == {
        ("ticket-classifier", "local/student-v3"),
        ("tc", "ticket-classifier"),
    }

    r = run("show", "ticket-classifier")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "ticket-classifier → local/student-v3"
    assert "created → openai/gpt-4o  by cli-user  — baseline" in lines[1]
    assert "openai/gpt-4o → local/student-v3  by bo  — cheaper" in lines[2]
    shown = json.loads(run("show", "tc", "--json").stdout)
    assert shown["resolved"] == "local/student-v3" and shown["history"][0]["by"] == "cli-user"

    r = run("delete", "ticket-classifier")
    assert r.exit_code != 0 and r.stderr.startswith("error:") and "target of 'tc'" in r.stderr
    assert "Traceback" not in r.output
    assert run("delete", "tc", "--reason", "cleanup").stdout == "deleted tc\n"
    r = run("show", "tc")
    assert r.exit_code != 0 and "no alias 'tc'" in r.stderr

    r = run("set", "x", "gpt-4o")
    assert (
        r.exit_code != 0 and "not a model string provider/model" in r.stderr and "Traceback" not in r.output
    )
