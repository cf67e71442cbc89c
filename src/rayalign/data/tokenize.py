"""Tokenisation: chat template with assistant-only labels, corpus text with EOS.

Assistant spans are found by rendering the chat template on growing prefixes of the conversation:
the text an assistant turn adds is everything between the prompt rendered with a generation prompt
and the conversation rendered through that turn. This works for any prefix-stable template
(ChatML, Llama 3, Mistral...) without per-template rules, and it includes the end-of-turn token so
the model learns to stop. Character spans are mapped to tokens with the fast tokenizer's offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

from rayalign.constants import IGNORE
from rayalign.data.schemas import OPEN_FIELDS


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
        # the conversation through the last turn is the full text: skip one render per chat
        through = full if i == len(messages) - 1 else render(tokenizer, messages[: i + 1])
        if not full.startswith(through) or not through.startswith(before):
            raise TemplateError("chat template is not prefix-stable; assistant spans cannot be located")
        spans.append((len(before), len(through)))
    return full, spans


def _labels_from_spans(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    labels = [IGNORE] * len(ids)
    si = 0
    for t, (s, e) in enumerate(offsets):
        while si < len(spans) and s >= spans[si][1]:
            si += 1
        if si < len(spans) and spans[si][0] <= s < spans[si][1] and e > s:
            labels[t] = ids[t]
    return labels


def tokenize_chats(tokenizer, chats: list[list[dict]]) -> list[Tokenized | TemplateError]:
    """Batch version of :func:`tokenize_chat` (one tokenizer call for all texts); template errors per chat."""
    rendered: list[tuple[str, list] | TemplateError] = []
    for messages in chats:
        try:
            rendered.append(assistant_char_spans(tokenizer, messages))
        except TemplateError as e:
            rendered.append(e)
    texts = [r[0] for r in rendered if not isinstance(r, TemplateError)]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True) if texts else {"input_ids": []}
    out: list[Tokenized | TemplateError] = []
    k = 0
    for r in rendered:
        if isinstance(r, TemplateError):
            out.append(r)
            continue
        ids, offsets = enc["input_ids"][k], enc["offset_mapping"][k]
        k += 1
        out.append(Tokenized(list(ids), _labels_from_spans(ids, offsets, r[1])))
    return out


def tokenize_chat(tokenizer, messages: list[dict]) -> Tokenized:
    """input_ids of the whole conversation; labels = ids on assistant tokens, -100 elsewhere."""
    result = tokenize_chats(tokenizer, [messages])[0]
    if isinstance(result, TemplateError):
        raise result
    return result


def tokenize_texts(tokenizer, texts: list[str], add_eos: bool = True) -> list[Tokenized]:
    """Plain documents (continued pretraining): every token is a target; EOS closes each document."""
    if not texts:
        return []
    eos = [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else []
    return [
        Tokenized(list(ids) + eos, list(ids) + eos) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]
    ]


def tokenize_text(tokenizer, text: str, add_eos: bool = True) -> Tokenized:
    return tokenize_texts(tokenizer, [text], add_eos)[0]


def tokenize_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Prompt ids ending with the assistant generation header (for generation and pair scoring)."""
    return list(
        tokenizer(render(tokenizer, messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    )


def tokenize_pair(
    tokenizer, prompt: list[dict], chosen: str, rejected: str, open_ends: tuple[bool, bool] = (False, False)
) -> dict:
    """Prompt ids once, and each response as the ids it adds after the prompt (end-of-turn included).

    `open_ends` (chosen, rejected): a side marked open is an answer that did not end (cut off at the
    sampling budget), so it gets no end-of-turn: it is a prefix, and training on it must not teach
    the model to end its answer there."""
    out = {}
    prompt_text = render(tokenizer, prompt, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    out["prompt_ids"] = list(prompt_ids)
    for name, response, is_open in (("chosen", chosen, open_ends[0]), ("rejected", rejected, open_ends[1])):
        full = render(tokenizer, [*prompt, {"role": "assistant", "content": response}])
        if not full.startswith(prompt_text):
            raise TemplateError("chat template is not prefix-stable")
        body = full[len(prompt_text) :]
        if is_open:
            body = without_end(body, response)
        out[f"{name}_ids"] = list(tokenizer(body, add_special_tokens=False)["input_ids"])
    return out


def without_end(body: str, response: str) -> str:
    """The rendered assistant turn `body` cut right after the response's text (its end-of-turn dropped)."""
    text = response.strip()
    at = body.rfind(text) if text else -1
    if at < 0:
        raise TemplateError("the chat template changes the answer's text, so its end cannot be left open")
    return body[: at + len(text)]


def pair_ids(tokenizer, row: dict) -> dict:
    """`tokenize_pair` of a pairs row, honouring its optional `chosen_open` / `rejected_open` flags."""
    chosen_open, rejected_open = (bool(row.get(name)) for name in OPEN_FIELDS)
    return tokenize_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"], (chosen_open, rejected_open))
