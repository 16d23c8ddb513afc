"""`local/<name>`: a Hugging Face causal LM run in-process, optionally with a LoRA adapter
(`pip install 'opentracy[train]'`: torch, transformers, peft; imported on the first call, never by
`import opentracy`).

- Which model `<name>` is comes from the registry (opentracy.llm.local_models: the catalog, then
  `OPENTRACY_LOCAL_MODELS`), which the engine hands to the `local` endpoint (`options["registry"]`), then
  from the endpoint's own `models` option (`OPENTRACY_ENDPOINTS='{"gpu": {"kind": "local", "models": {...},
  "device": "cuda:1"}}'`). It is looked up on every call, so a model registered (or deleted) while the
  process runs is seen at once.
- Weights load on first use, in a worker thread, and stay loaded per (base model, adapter, device, dtype);
  at most `OPENTRACY_LOCAL_MAX_LOADED` (default 2) sets at once, the least recently used leaving first.
  The adapter's folder provides the tokenizer when it holds one (a student saved with its tokenizer).
- Generation runs in a worker thread, off the event loop, one call at a time per loaded model. The prompt
  is the tokenizer's chat template (or the registered one), else a plain `System:/User:/Assistant:`
  transcript. `max_tokens` (default: the model's registered default, else 256), `temperature` (0: greedy),
  `top_p`, `top_k`, `repetition_penalty` and `stop` are honoured; sampling draws from a generator seeded
  with `seed` (the gateway's sample index), private to the call, so N samples differ and the same seed
  repeats, whatever else runs in the process. Tokens in and out are counted by the tokenizer.
- `stream=True` reports the time to the first generated token. The call's timeout stops generation at
  the next token (loading the weights does not count against it); cancelling the caller stops it too.
- `response_format` (JSON) is asked for in a system message; decoding is not constrained, so the gateway's
  validation and single repair decide, and report a typed error when a small model cannot comply.
  Tools are not supported.
- Cost: the registry's price per million tokens (default 0); a price override for the model string in
  `OPENTRACY_PRICES` / `Pricing(...)` wins over it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentracy.errors import InvalidInput, NotFound
from opentracy.llm.local_models import ENV_VAR, LocalModel, LocalModelService, check_generation, parse_config
from opentracy.llm.providers import Provider
from opentracy.llm.types import Completion, Endpoint, LLMError, LLMTimeout

DEFAULT_MAX_TOKENS = 256
INSTALL_HINT = "pip install 'opentracy[train]'"
MAX_LOADED_VAR = "OPENTRACY_LOCAL_MAX_LOADED"
# Parameters a local model takes, and those that change nothing here and are dropped.
_TAKES = {
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "stop",
}
_IGNORED = {"seed", "response_format", "user", "stream_options", "store", "parallel_tool_calls"}

_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="opentracy-local")


@dataclass
class _Loaded:
    model: Any
    tokenizer: Any
    device: str
    eos: frozenset[int]
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generation at a time per model


class _Cache:
    """Loaded models, process-wide (providers are per event loop; weights must not be)."""

    def __init__(self) -> None:
        self._items: OrderedDict[tuple[str, str | None, str, str], _Loaded] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, str | None, str, str], threading.Lock] = {}

    def get(self, key: tuple[str, str | None, str, str]) -> _Loaded:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:  # one load per key, however many callers wait for it
            with self._lock:
                hit = self._items.get(key)
                if hit is not None:
                    return hit
            loaded = _load(*key)
            with self._lock:
                self._items[key] = loaded
                self._loading.pop(key, None)
                limit = max(1, int(os.environ.get(MAX_LOADED_VAR) or 2))
                while len(self._items) > limit:
                    self._items.popitem(last=False)
            return loaded

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


LOADED = _Cache()


def _pick_device(device: str | None, dtype: str | None) -> tuple[str, str]:
    import torch

    if not device:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not dtype:
        dtype = "bfloat16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"
    return device, dtype


def _load(base: str, adapter: str | None, device: str, dtype: str) -> _Loaded:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise InvalidInput(f"unknown dtype {dtype!r} (e.g. float32, bfloat16, float16)")
    tok_src = adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else base
    tokenizer = AutoTokenizer.from_pretrained(tok_src)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.to(device)
    model.eval()
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    eos_ids = frozenset(eos if isinstance(eos, list) else [] if eos is None else [eos])
    return _Loaded(model, tokenizer, device, eos_ids)


@dataclass
class _Request:
    messages: list[dict[str, str]]
    chat_template: str | None
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float | None
    stop: list[str]
    seed: int
    stream: bool


class LocalModels(Provider):
    def __init__(self, endpoint: Endpoint, *, timeout: float) -> None:
        super().__init__(endpoint, timeout=timeout)
        missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
        if missing:
            raise InvalidInput(f"local models need {' and '.join(missing)}: {INSTALL_HINT}")
        reg = endpoint.options.get("registry")
        self.registry: LocalModelService = reg if reg is not None else LocalModelService(None)
        models = endpoint.options.get("models")
        where = f"OPENTRACY_ENDPOINTS[{endpoint.name!r}].models"
        self.models = parse_config(models, where) if models else {}
        self.device: str | None = endpoint.options.get("device")
        self.dtype: str | None = endpoint.options.get("dtype")

    def spec(self, name: str) -> LocalModel:
        m = self.registry.lookup(name) or self.models.get(name)
        if m is None:
            raise NotFound(
                f"no local model {name!r}: register it (engine.local_models.register, or the distillation job "
                f"that trains it) or name it in {ENV_VAR}"
            )
        return m

    async def chat(
        self,
        model: str,
        messages: Sequence[dict[str, Any]],
        params: dict[str, Any],
        *,
        timeout: float,
        stream: bool,
        t0: float,
    ) -> Completion:
        where = f"{self.endpoint.name}/{model}"
        spec = self.spec(model)
        req = _request(spec, messages, params, stream, where)
        loop = asyncio.get_running_loop()
        try:
            device, dtype = _pick_device(self.device, self.dtype)
            key = (spec.base_model, spec.adapter, device, dtype)
            loaded = await loop.run_in_executor(_executor, LOADED.get, key)
        except (OSError, ValueError, RuntimeError, ImportError) as e:
            hint = f" ({INSTALL_HINT})" if isinstance(e, ImportError) else ""
            raise LLMError(
                f"{where}: cannot load {spec.base_model!r}"
                f"{f' with adapter {spec.adapter!r}' if spec.adapter else ''}: {type(e).__name__}: {e}{hint}",
                model=where,
                retryable=False,
            ) from None
        cancel = threading.Event()
        deadline = time.monotonic() + timeout  # from here: loading the weights does not count
        try:
            text, tin, tout, finish, ttft_at = await loop.run_in_executor(
                _executor, _generate, loaded, req, cancel, deadline
            )
        except asyncio.CancelledError:
            cancel.set()  # the worker stops at its next token
            raise
        except _Stopped:
            raise LLMTimeout(
                f"{where}: generation did not finish within {timeout:g} s", model=where, retryable=False
            ) from None
        except (RuntimeError, ValueError) as e:
            raise LLMError(f"{where}: generation failed: {type(e).__name__}: {e}", model=where) from None
        return Completion(
            model=model,
            content=text,
            finish_reason=finish,
            input_tokens=tin,
            output_tokens=tout,
            cost_usd=spec.cost(tin, tout),
            latency_s=time.perf_counter() - t0,
            ttft_s=(ttft_at - t0) if ttft_at is not None else None,
            message={"role": "assistant", "content": text},
        )


# --- the request ----------------------------------------------------------------------------------


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for p in content:
            if isinstance(p, dict) and p.get("type") == "text":
                out.append(p.get("text") or "")
            elif isinstance(p, dict):
                raise InvalidInput(
                    f"local models take text only, not content parts of type {p.get('type')!r}"
                )
        return "".join(out)
    return str(content)


def _request(
    spec: LocalModel, messages: Sequence[dict[str, Any]], params: dict[str, Any], stream: bool, where: str
) -> _Request:
    p = dict(params)
    if p.get("tools") or p.get("tool_choice") not in (None, "none", "auto"):
        raise InvalidInput(f"{where}: local models do not support tools")
    p.pop("tools", None)
    p.pop("tool_choice", None)
    unknown = set(p) - _TAKES - _IGNORED
    if unknown:
        raise InvalidInput(
            f"{where}: local models do not take {', '.join(repr(k) for k in sorted(unknown))} "
            f"(they take {', '.join(sorted(_TAKES))})"
        )
    given = {k: v for k, v in p.items() if k in _TAKES and v is not None}
    if "max_completion_tokens" in given:
        given.setdefault("max_tokens", given.pop("max_completion_tokens"))
    given = check_generation(given, where)
    g = {**spec.generation, **given}
    msgs = []
    fmt = p.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object"):
        schema = (fmt.get("json_schema") or {}).get("schema") if fmt["type"] == "json_schema" else None
        ask = "Reply with only a JSON object"
        if isinstance(schema, dict):
            ask += f" matching this JSON schema: {json.dumps(schema, separators=(',', ':'))}"
        msgs.append({"role": "system", "content": ask + ". No other text."})
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise InvalidInput(
                f"{where}: messages[{i}] has role {role!r}; local models take system, user, assistant"
            )
        msgs.append({"role": "system" if role == "developer" else role, "content": _text(m.get("content"))})
    stop = g.get("stop") or []
    seed = p.get("seed")
    return _Request(
        messages=msgs,
        chat_template=spec.chat_template,
        max_tokens=int(g.get("max_tokens") or DEFAULT_MAX_TOKENS),
        temperature=float(g.get("temperature", 1.0)),
        top_p=float(g.get("top_p", 1.0)),
        top_k=int(g.get("top_k") or 0),
        repetition_penalty=g.get("repetition_penalty"),
        stop=[stop] if isinstance(stop, str) else list(stop),
        seed=int(seed) if isinstance(seed, int) else int.from_bytes(os.urandom(4), "little"),
        stream=stream,
    )


def prompt_text(
    tokenizer: Any, messages: list[dict[str, str]], chat_template: str | None
) -> tuple[str, bool]:
    """(prompt, whether it came from a chat template). Without a template: a plain role transcript."""
    if chat_template or getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            messages, chat_template=chat_template, add_generation_prompt=True, tokenize=False
        )
        return text, True
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join([*lines, "Assistant:"]), False


# --- generation (in a worker thread) --------------------------------------------------------------


class _Stopped(Exception):
    """The deadline passed during generation."""


def _generate(
    loaded: _Loaded, req: _Request, cancel: threading.Event, deadline: float
) -> tuple[str, int, int, str, float | None]:
    import torch

    with loaded.lock, torch.inference_mode():  # one call at a time per model, tokenizer included
        if cancel.is_set():
            raise _Stopped()
        return _generate_locked(loaded, req, cancel, deadline)


def _generate_locked(
    loaded: _Loaded, req: _Request, cancel: threading.Event, deadline: float
) -> tuple[str, int, int, str, float | None]:
    import torch
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    tok = loaded.tokenizer
    text, templated = prompt_text(tok, req.messages, req.chat_template)
    # A chat template writes its own special tokens; a plain transcript gets the tokenizer's (e.g. BOS).
    ids = tok(text, add_special_tokens=not templated, return_tensors="pt")["input_ids"].to(loaded.device)
    n_in = int(ids.shape[1])
    gc = GenerationConfig(
        max_new_tokens=req.max_tokens,
        do_sample=False,  # sampling, when asked, is _Sampler's, with the call's own generator
        num_beams=1,
        eos_token_id=sorted(loaded.eos) or None,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else next(iter(loaded.eos), None),
        bos_token_id=loaded.model.generation_config.bos_token_id,
        repetition_penalty=req.repetition_penalty,
    )
    processors = LogitsProcessorList()
    if req.temperature > 0:
        gen = torch.Generator(device=loaded.device).manual_seed(req.seed)
        processors.append(_sampler(req.temperature, req.top_p, req.top_k, gen))
    watch = _watch(cancel, deadline, req.stop, tok, n_in)
    streamer = _first_token() if req.stream else None
    out = loaded.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        generation_config=gc,
        logits_processor=processors,
        stopping_criteria=StoppingCriteriaList([watch]),
        streamer=streamer,
    )
    if watch.hit:
        raise _Stopped()
    new = out[0, n_in:].tolist()
    answer = tok.decode(new, skip_special_tokens=True)
    finish = "stop"
    cut = min((i for i in (answer.find(s) for s in req.stop) if i >= 0), default=-1)
    if cut >= 0:
        answer = answer[:cut]
    elif (not new or new[-1] not in loaded.eos) and len(new) >= req.max_tokens:
        finish = "length"
    return answer, n_in, len(new), finish, streamer.at if streamer is not None else None


def _sampler(temperature: float, top_p: float, top_k: int, gen: Any) -> Any:
    """A logits processor that samples the next token itself (temperature, top-k, top-p) with the call's
    generator and leaves only that token possible, so greedy decoding picks it."""
    import torch
    from transformers import LogitsProcessor

    class Sampler(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            s = scores.float() / temperature
            if top_k and top_k < s.shape[-1]:
                kth = torch.topk(s, top_k, dim=-1).values[..., -1:]
                s = s.masked_fill(s < kth, float("-inf"))
            if top_p < 1.0:
                sorted_s, order = torch.sort(s, descending=True, dim=-1)
                probs = torch.softmax(sorted_s, dim=-1)
                drop = probs.cumsum(-1) - probs > top_p  # keep the smallest set reaching top_p
                s = s.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
            choice = torch.multinomial(torch.softmax(s, dim=-1), 1, generator=gen)
            out = torch.full_like(scores, float("-inf"))
            return out.scatter(-1, choice, 0.0)

    return Sampler()


def _watch(cancel: threading.Event, deadline: float, stops: list[str], tok: Any, n_in: int) -> Any:
    """Stops generation when the call is cancelled or past its deadline (`hit`), or when the decoded
    answer contains a stop string. Stop strings are matched on the decoded text, not on token strings, so
    they work with any tokenizer (byte-level BPE tokens need not be whole characters)."""
    import torch
    from transformers import StoppingCriteria

    longest = max((len(s) for s in stops), default=0)

    class Watch(StoppingCriteria):
        hit = False
        seen = 0  # characters of the answer already searched

        def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
            stop = cancel.is_set() or time.monotonic() > deadline
            if stop:
                self.hit = True
            elif stops:
                text = tok.decode(input_ids[0, n_in:], skip_special_tokens=True)
                start = max(0, self.seen - longest)
                stop = any(text.find(s, start) >= 0 for s in stops)
                self.seen = len(text)
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    return Watch()


def _first_token() -> Any:
    from transformers.generation.streamers import BaseStreamer

    class FirstToken(BaseStreamer):
        """Notes when the first generated token arrives (the first `put` is the prompt)."""

        def __init__(self) -> None:
            self.puts = 0
            self.at: float | None = None

        def put(self, value: Any) -> None:
            self.puts += 1
            if self.puts == 2:
                self.at = time.perf_counter()

        def end(self) -> None:
            pass

    return FirstToken()
