"""Tokenisation: chat template with assistant-only labels, corpus text with EOS.

Assistant spans are found by rendering the chat template on growing prefixes of the conversation:
the text an assistant turn adds is everything between the prompt rendered with a generation prompt
and the conversation rendered through that turn. This works for any prefix-stable template
(ChatML, Llama 3, Mistral...) without per-template rules, and it includes the end-of-turn token so
the model learns to stop. Character spans are mapped to tokens with the fast tokenizer's offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE = -100


class TemplateError(ValueError):
    pass


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_targets(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_char_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Full rendered text and the [start, end) character spans of every assistant turn."""
    full = render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        through = render(tokenizer, messages[: i + 1])
        if not full.startswith(through) or not through.startswith(before):
            raise TemplateError("chat template is not prefix-stable; assistant spans cannot be located")
        spans.append((len(before), len(through)))
    return full, spans


def tokenize_chat(tokenizer, messages: list[dict]) -> Tokenized:
    """input_ids of the whole conversation; labels = ids on assistant tokens, -100 elsewhere."""
    text, spans = assistant_char_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    si = 0
    for t, (s, e) in enumerate(offsets):
        while si < len(spans) and s >= spans[si][1]:
            si += 1
        if si < len(spans) and spans[si][0] <= s < spans[si][1] and e > s:
            labels[t] = ids[t]
    return Tokenized(list(ids), labels)


def tokenize_text(tokenizer, text: str, add_eos: bool = True) -> Tokenized:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if add_eos and tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return Tokenized(list(ids), list(ids))


def tokenize_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Prompt ids ending with the assistant generation header (for generation and pair scoring)."""
    return list(tokenizer(render(tokenizer, messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"])


def tokenize_pair(tokenizer, prompt: list[dict], chosen: str, rejected: str) -> dict:
    """Prompt ids once, and each response as the ids it adds after the prompt (end-of-turn included)."""
    out = {}
    prompt_text = render(tokenizer, prompt, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    out["prompt_ids"] = list(prompt_ids)
    for name, response in (("chosen", chosen), ("rejected", rejected)):
        full = render(tokenizer, prompt + [{"role": "assistant", "content": response}])
        if not full.startswith(prompt_text):
            raise TemplateError("chat template is not prefix-stable")
        out[f"{name}_ids"] = list(tokenizer(full[len(prompt_text):], add_special_tokens=False)["input_ids"])
    return out
