"""A tiny random-weight causal LM and LoRA adapters, built offline in a second, for tests and benchmarks of
`local/…` models (and of anything that trains or serves a student). Needs `opentracy[train]`.

    from opentracy.testing.tiny_lm import tiny_causal_lm, lora_adapter
    base = tiny_causal_lm(tmp_path / "base")                 # a 2-layer Llama + a 300-token BPE tokenizer
    chat = tiny_causal_lm(tmp_path / "chat", chat_template=SIMPLE_TEMPLATE)
    adapter = lora_adapter(base, tmp_path / "lora")          # random, non-zero LoRA weights
    same = lora_adapter(base, tmp_path / "lora0", zero=True) # peft's own init (B = 0): changes nothing

The weights are random (seeded, so the same every time): answers are gibberish, but token counts, seeds,
sampling, stop strings, adapters and chat templates behave as with a real model.
"""

from __future__ import annotations

from pathlib import Path

SENTENCES = (
    "where is my card",
    "the card was shipped yesterday",
    "please reset my password",
    "my invoice is wrong",
    "thank you for your help",
    "the refund arrived today",
    "you help with cards and invoices",
)
SIMPLE_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_causal_lm(
    path: str | Path,
    *,
    chat_template: str | None = None,
    seed: int = 0,
    vocab_size: int = 300,
    layers: int = 2,
    hidden: int = 64,
) -> Path:
    """Save a random Llama (`layers` × `hidden`) and a byte-level BPE tokenizer trained on a few sentences
    (`<s>`, `</s>`, `<pad>`, `<unk>`) to `path`, as `save_pretrained` does; returns the path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(SENTENCES) * 4, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    if chat_template is not None:
        tok.chat_template = chat_template
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def lora_adapter(
    base: str | Path, path: str | Path, *, zero: bool = False, seed: int = 1, r: int = 4
) -> Path:
    """Save a LoRA adapter (q_proj, v_proj) for the model at `base` to `path`. `zero=False` draws every
    LoRA matrix at random, so the adapter changes the model's answers; `zero=True` keeps peft's own
    initialisation (B = 0), under which the adapted model equals the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    path = Path(path)
    model = AutoModelForCausalLM.from_pretrained(base)
    cfg = LoraConfig(r=r, lora_alpha=4 * r, target_modules=["q_proj", "v_proj"], init_lora_weights=zero)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        get_peft_model(model, cfg).save_pretrained(path)
    return path
