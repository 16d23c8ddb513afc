"""`local/<name>`: the registry of local models, and a tiny random-weight Llama (built here, offline, with a
tokenizer trained on a few sentences) run in-process through the gateway, with and without a LoRA adapter."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from opentracy.errors import Conflict, InvalidInput, NotFound
from opentracy.llm.gateway import Endpoint, Gateway, LLMTimeout, StructuredOutputError
from opentracy.llm.local_models import ENV_VAR, LocalModelService, parse_config
from opentracy.llm.pricing import Pricing

MSG = [{"role": "system", "content": "You help with cards."}, {"role": "user", "content": "where is my card"}]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2-layer Llama with random weights and a 300-token BPE tokenizer; a copy whose tokenizer has a chat
    template; a LoRA adapter with random (non-zero) weights, and one as peft initialises it (B = 0)."""
    from opentracy.testing.tiny_lm import SIMPLE_TEMPLATE, lora_adapter, tiny_causal_lm

    root = tmp_path_factory.mktemp("tiny-lm")
    base = tiny_causal_lm(root / "base")
    return {
        "base": base,
        "chat": tiny_causal_lm(root / "chat", chat_template=SIMPLE_TEMPLATE),
        "lora": lora_adapter(base, root / "lora"),
        "lora_zero": lora_adapter(base, root / "lora_zero", zero=True),
    }


def local_gateway(models: dict, **kw) -> Gateway:
    """A gateway whose `local` endpoint knows `models` (the OPENTRACY_LOCAL_MODELS shape) and no catalog."""
    import json

    reg = LocalModelService(None, environ={ENV_VAR: json.dumps(models)})
    ep = Endpoint("local", None, None, 1, kind="local", options={"registry": reg})
    return Gateway(endpoints={"local": ep}, **kw)


@pytest.fixture(scope="module")
def gw(tiny) -> Gateway:
    g = local_gateway(
        {
            "tiny": {"base_model": str(tiny["base"])},
            "tiny-chat": {"base_model": str(tiny["chat"])},
            "tiny-greedy": {
                "base_model": str(tiny["base"]),
                "generation": {"temperature": 0, "max_tokens": 12},
            },
            "tiny-lora": {"base_model": str(tiny["base"]), "adapter": str(tiny["lora"])},
            "tiny-lora-zero": {"base_model": str(tiny["base"]), "adapter": str(tiny["lora_zero"])},
        }
    )
    yield g
    g.close()


def test_import_opentracy_does_not_import_torch():
    code = (
        "import sys, opentracy, opentracy.engine, opentracy.cli, opentracy.llm.gateway, "
        "opentracy.llm.local_models, opentracy.llm.providers.local\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- through the gateway ----------------------------------------------------------------------------


def test_a_call_counts_tokens_with_the_tokenizer(gw, tiny):
    from transformers import AutoTokenizer

    c = gw.complete_sync("local/tiny", MSG, params={"max_tokens": 16})
    tok = AutoTokenizer.from_pretrained(tiny["base"])
    prompt = "System: You help with cards.\n\nUser: where is my card\n\nAssistant:"
    assert c.input_tokens == len(tok(prompt)["input_ids"])
    assert 0 < c.output_tokens <= 16 and c.model == "local/tiny" and c.cost_usd == 0.0
    assert c.finish_reason in ("stop", "length") and (c.finish_reason == "length") == (c.output_tokens == 16)
    assert c.latency_s > 0 and c.ttft_s is None and c.message == {"role": "assistant", "content": c.content}


def test_the_chat_template_is_used_when_the_tokenizer_has_one(gw, tiny):
    from transformers import AutoTokenizer

    c = gw.complete_sync("local/tiny-chat", MSG, params={"max_tokens": 4})
    tok = AutoTokenizer.from_pretrained(tiny["chat"])
    prompt = "<|system|>You help with cards.\n<|user|>where is my card\n<|assistant|>"
    assert c.input_tokens == len(tok(prompt, add_special_tokens=False)["input_ids"])


def test_samples_differ_and_seeds_repeat(gw):
    a = [gw.complete_sync("local/tiny", MSG, sample=i, params={"max_tokens": 12}).content for i in range(4)]
    b = [gw.complete_sync("local/tiny", MSG, sample=i, params={"max_tokens": 12}).content for i in range(4)]
    assert len(set(a)) == 4 and a == b
    seeded = gw.complete_sync("local/tiny", MSG, params={"max_tokens": 12, "seed": 2}).content
    assert seeded == a[2]


def test_temperature_zero_is_greedy(gw):
    outs = {
        gw.complete_sync("local/tiny", MSG, sample=i, params={"temperature": 0, "max_tokens": 12}).content
        for i in range(3)
    }
    assert len(outs) == 1
    # the registered defaults apply when the call does not say (tiny-greedy: temperature 0, 12 tokens)
    d = gw.complete_sync("local/tiny-greedy", MSG, sample=5)
    assert d.content == outs.pop() and d.output_tokens <= 12


def test_max_tokens_is_honoured(gw):
    for n in (1, 3, 7):
        c = gw.complete_sync("local/tiny", MSG, params={"max_tokens": n, "temperature": 0.7})
        assert c.output_tokens <= n
    long = gw.complete_sync("local/tiny", MSG, params={"max_tokens": 40, "temperature": 0})
    short = gw.complete_sync("local/tiny", MSG, params={"max_tokens": 5, "temperature": 0})
    assert short.output_tokens == 5 and short.finish_reason == "length"
    assert long.content.startswith(short.content) and len(long.content) > len(short.content)


def test_stop_strings_cut_the_answer(gw):
    full = gw.complete_sync("local/tiny", MSG, params={"max_tokens": 30, "temperature": 0}).content
    # two printable characters from the middle (a random model's byte tokens also decode to U+FFFD)
    at = next(
        i
        for i in range(len(full) // 3, len(full) - 1)
        if full[i : i + 2].isascii() and full[i : i + 2].isprintable()
    )
    stop = full[at : at + 2]
    c = gw.complete_sync("local/tiny", MSG, params={"max_tokens": 30, "temperature": 0, "stop": [stop]})
    assert c.content == full[: full.find(stop)] and c.finish_reason == "stop"
    assert c.output_tokens < 30


def test_streaming_gives_time_to_first_token(gw):
    plain = gw.complete_sync("local/tiny", MSG, params={"max_tokens": 30}, sample=1)
    s = gw.complete_sync("local/tiny", MSG, params={"max_tokens": 30}, sample=1, stream=True)
    assert s.content == plain.content and s.output_tokens == plain.output_tokens
    assert s.ttft_s is not None and 0 < s.ttft_s < s.latency_s


def test_a_lora_adapter_is_applied(gw):
    p = {"temperature": 0, "max_tokens": 20}
    base = gw.complete_sync("local/tiny", MSG, params=p)
    lora = gw.complete_sync("local/tiny-lora", MSG, params=p)
    zero = gw.complete_sync("local/tiny-lora-zero", MSG, params=p)
    assert lora.content != base.content  # random, non-zero adapter weights change the answer
    assert zero.content == base.content  # an adapter whose B matrices are 0 changes nothing
    from opentracy.llm.providers.local import LOADED

    adapters = [k[1] for k in LOADED._items]
    assert any(a and a.endswith("lora") for a in adapters)


def test_a_generation_past_its_timeout_stops(gw):
    gw.complete_sync("local/tiny", MSG, params={"max_tokens": 1})  # loaded: loading does not count
    t = time.perf_counter()
    with pytest.raises(LLMTimeout):
        gw.complete_sync("local/tiny", MSG, params={"max_tokens": 900}, timeout=0.05, max_retries=0)
    assert time.perf_counter() - t < 2


def test_unsupported_requests_are_refused(gw):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(InvalidInput, match="tools"):
        gw.complete_sync("local/tiny", MSG, params={"tools": tools})
    with pytest.raises(InvalidInput, match="logprobs"):
        gw.complete_sync("local/tiny", MSG, params={"logprobs": True})
    with pytest.raises(InvalidInput, match="temperature"):
        gw.complete_sync("local/tiny", MSG, params={"temperature": -1})
    with pytest.raises(NotFound, match="no local model 'nope'"):
        gw.complete_sync("local/nope", MSG)


class Verdict(BaseModel):
    score: float
    reason: str


def test_structured_output_from_a_model_that_cannot_comply_is_a_typed_error(gw):
    with pytest.raises(StructuredOutputError) as e:
        gw.complete_sync("local/tiny", MSG, response_model=Verdict, params={"max_tokens": 8})
    assert e.value.raw is not None


def test_cost_is_the_registered_price_unless_overridden(tiny):
    models = {"priced": {"base_model": str(tiny["base"]), "input_price": 1.0, "output_price": 2.0}}
    g = local_gateway(models, pricing=Pricing(environ={}))
    c = g.complete_sync("local/priced", MSG, params={"max_tokens": 5})
    g.close()
    assert c.cost_usd == pytest.approx(c.input_tokens * 1e-6 + c.output_tokens * 2e-6) and c.cost_usd > 0
    g = local_gateway(models, pricing=Pricing({"local/priced": {"input": 10, "output": 0}}, environ={}))
    c = g.complete_sync("local/priced", MSG, params={"max_tokens": 5})
    g.close()
    assert c.cost_usd == pytest.approx(c.input_tokens * 10e-6)


def test_a_missing_base_model_is_a_clear_error(tmp_path):
    from opentracy.llm.gateway import LLMError

    g = local_gateway({"ghost": {"base_model": str(tmp_path / "nowhere")}})
    with pytest.raises(LLMError, match="cannot load") as e:
        g.complete_sync("local/ghost", MSG)
    g.close()
    assert not e.value.retryable


# --- the registry (catalog, on SQLite and PostgreSQL) -----------------------------------------------


def test_register_list_get_delete(engine, tiny):
    reg = engine.local_models
    m = reg.register(
        "student",
        str(tiny["base"]),
        adapter=str(tiny["lora"]),
        generation={"temperature": 0, "max_tokens": 8},
        input_price=0.5,
        meta={"job_id": "job_x"},
    )
    assert m.id.startswith("m_") and m.source == "catalog" and m.adapter == str(tiny["lora"].resolve())
    assert reg.get("student") == m and reg.get(m.id) == m
    assert [x.name for x in reg.list()] == ["student"] and reg.list()[0].meta == {"job_id": "job_x"}
    with pytest.raises(Conflict):
        reg.register("student", str(tiny["base"]))
    c = engine.gateway.complete_sync("local/student", MSG)  # the engine's gateway reaches the catalog
    assert 0 < c.output_tokens <= 8 and c.cost_usd == pytest.approx(c.input_tokens * 0.5e-6)
    reg.delete("student")
    with pytest.raises(NotFound):
        reg.get("student")
    with pytest.raises(NotFound):
        engine.gateway.complete_sync("local/student", MSG)
    with pytest.raises(NotFound):
        reg.delete("student")


def test_registration_checks_its_input(engine, tiny, tmp_path):
    reg = engine.local_models
    with pytest.raises(InvalidInput, match="does not exist"):
        reg.register("a", str(tmp_path / "missing"))
    with pytest.raises(InvalidInput, match="no config.json"):
        reg.register("a", str(tmp_path))
    with pytest.raises(InvalidInput, match="no adapter_config.json"):
        reg.register("a", str(tiny["base"]), adapter=str(tiny["base"]))
    with pytest.raises(InvalidInput, match="invalid local model name"):
        reg.register("a/b", str(tiny["base"]))
    with pytest.raises(InvalidInput, match="top_p"):
        reg.register("a", str(tiny["base"]), generation={"top_p": 2})
    with pytest.raises(InvalidInput, match="unknown key"):
        reg.register("a", str(tiny["base"]), generation={"beams": 2})
    with pytest.raises(InvalidInput, match="input_price"):
        reg.register("a", str(tiny["base"]), input_price=-1)
    assert reg.list() == []


def test_configured_models_and_the_catalog(engine, tiny):
    env = {ENV_VAR: f'{{"cfg": {{"base_model": "{tiny["base"]}"}}, "both": {{"base_model": "org/model"}}}}'}
    reg = LocalModelService(engine.catalog, environ=env)
    assert [(m.name, m.source) for m in reg.list()] == [("both", "config"), ("cfg", "config")]
    with pytest.raises(Conflict, match=ENV_VAR):
        reg.register("cfg", str(tiny["base"]))
    with pytest.raises(Conflict, match=ENV_VAR):
        reg.delete("cfg")
    assert reg.lookup("cfg").base_model == str(tiny["base"])
    assert reg.lookup("unknown") is None


def test_the_config_variable_is_checked():
    with pytest.raises(InvalidInput, match="not valid JSON"):
        parse_config("{")
    with pytest.raises(InvalidInput, match="needs a base_model"):
        parse_config({"x": {}})
    with pytest.raises(InvalidInput, match=r"\['x'\].*unknown key"):
        parse_config({"x": {"base_model": "a/b", "lora": "y"}})
    with pytest.raises(InvalidInput, match=r"\['x'\].generation.temperature"):
        parse_config({"x": {"base_model": "a/b", "generation": {"temperature": "hot"}}})


# --- API, client and CLI --------------------------------------------------------------------------------


def test_the_client_registers_lists_and_deletes(client, tiny):
    m = client.register_local_model(
        "student",
        str(tiny["base"]),
        adapter=str(tiny["lora"]),
        generation={"temperature": 0},
        output_price=1.5,
    )
    assert m.id.startswith("m_") and m.model == "local/student" and m.output_price == 1.5
    assert client.get_local_model(m.id) == m == client.get_local_model("student")
    assert [x.name for x in client.list_local_models()] == ["student"]
    with pytest.raises(Conflict):
        client.register_local_model("student", str(tiny["base"]))
    with pytest.raises(InvalidInput, match="does not exist"):
        client.register_local_model("other", "/no/such/folder")
    client.delete_local_model("student")
    assert client.list_local_models() == []


def test_the_cli_registers_lists_and_deletes(server, tiny):
    from click.testing import CliRunner

    from opentracy.cli import main

    def run(*args: str):
        return CliRunner().invoke(
            main, ["--url", server.url, "local-models", *args], env={"OPENTRACY_API_KEY": None}
        )

    r = run(
        "register",
        "cli-student",
        str(tiny["base"]),
        "--generation",
        '{"max_tokens": 9}',
        "--input-price",
        "2",
    )
    assert r.exit_code == 0, r.output
    assert "local/cli-student" in r.output
    r = run("list", "--json")
    assert r.exit_code == 0
    import json

    [item] = json.loads(r.output)
    assert item["generation"] == {"max_tokens": 9} and item["input_price"] == 2.0
    r = run("register", "x", str(tiny["base"]), "--generation", "{bad")
    assert r.exit_code != 0 and "not valid JSON" in r.output
    assert run("delete", "cli-student").exit_code == 0
    r = run("show", "cli-student")
    assert r.exit_code != 0 and "no local model" in r.output


def test_seeds_repeat_while_other_models_generate_at_once(gw, tiny):
    """Sampling uses a generator private to the call: two models generating in two threads at the same time
    give what each gives alone."""
    import threading

    other = local_gateway({"tiny-lora": {"base_model": str(tiny["base"]), "adapter": str(tiny["lora"])}})
    p = {"max_tokens": 40}
    alone_a = [gw.complete_sync("local/tiny", MSG, sample=i, params=p).content for i in range(3)]
    alone_b = [other.complete_sync("local/tiny-lora", MSG, sample=i, params=p).content for i in range(3)]
    got: dict[str, list[str]] = {}

    def run(name: str, g: Gateway, model: str) -> None:
        got[name] = [g.complete_sync(model, MSG, sample=i, params=p).content for i in range(3)]

    threads = [
        threading.Thread(target=run, args=("a", gw, "local/tiny")),
        threading.Thread(target=run, args=("b", other, "local/tiny-lora")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    other.close()
    assert got == {"a": alone_a, "b": alone_b}


def test_a_local_endpoint_named_in_opentracy_endpoints(tiny):
    import json

    from opentracy.llm.gateway import load_endpoints

    conf = {"cpu": {"kind": "local", "device": "cpu", "models": {"t": {"base_model": str(tiny["base"])}}}}
    eps = load_endpoints({"OPENTRACY_ENDPOINTS": json.dumps(conf)})
    g = Gateway(endpoints=eps)
    c = g.complete_sync("cpu/t", MSG, params={"max_tokens": 3})
    g.close()
    assert 0 < c.output_tokens <= 3 and c.model == "cpu/t"


def test_without_the_train_extra_the_error_says_what_to_install(monkeypatch):
    import importlib.util

    from opentracy.llm.providers import local

    real = importlib.util.find_spec
    monkeypatch.setattr(
        local.importlib.util, "find_spec", lambda n, *a: None if n == "torch" else real(n, *a)
    )
    g = local_gateway({"x": {"base_model": "org/model"}})
    with pytest.raises(InvalidInput, match=r"need torch: pip install 'opentracy\[train\]'"):
        g.complete_sync("local/x", MSG)
    g.close()
