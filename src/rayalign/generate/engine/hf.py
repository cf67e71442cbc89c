"""The Hugging Face backend: transformers `generate`, batched with left padding.

The CPU default and the only backend that serves Aligner adapters. Named adapters (LoRA or
Aligner folders) are each loaded as their own model beside the base (simple and exact; on a GPU
with many adapters prefer the vllm backend, which keeps one base and swaps LoRA weights per row).
Non-streaming requests are batched by the caller (`serve.batch` in the serving replica, whole
shards in the stages) and run one `generate` at a time under a lock. Concurrent streams share a
continuously batched loop instead (`hf_batching.StreamBatcher`, transformers' own manager): each
joins the running batch at the next step and leaves it when done or cancelled; streams it cannot
run exactly (log-probs, a fixed seed, an Aligner model) take the locked path. The model never runs
two forwards at once: a locked `generate` pauses the loops at a step boundary while it runs.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

from rayalign.generate.engine.hf_batching import StreamBatcher
from rayalign.generate.engine.protocol import (
    EngineConfig,
    EngineError,
    GenRequest,
    GenResult,
    SamplingParams,
    StreamChunk,
    TokenizingEngine,
    TokenLogprob,
    cut_at_stop,
    error_result,
    stream_with_stops,
)


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

        rows = input_ids[:, self.width :].tolist()
        hit = [cut_at_stop(self.tok.decode(r, skip_special_tokens=True), self.stops)[1] for r in rows]
        return torch.tensor(hit, dtype=torch.bool, device=input_ids.device)


class HFEngine(TokenizingEngine):
    """transformers `generate`, batched with left padding; CPU default and adapter-capable."""

    def __init__(self, cfg: EngineConfig):
        import torch

        from rayalign.models.loader import load_model

        super().__init__(cfg)

        def load(adapter: str | None):
            return load_model(cfg.model, dtype=cfg.dtype, adapter=adapter, trust_remote_code=cfg.trust_remote_code)

        self.model = load(cfg.adapter)
        self.models: dict[str | None, Any] = {None: self.model}
        for name, path in cfg.adapters.items():
            self.models[name] = load(path)
        self.device = next(self.model.parameters()).device
        self.torch = torch
        self._lock = threading.Lock()  # one generate at a time per model (serving calls from threads)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tok.eos_token_id is not None:
            self.eos_ids.add(self.tok.eos_token_id)
        model_max = getattr(self.model.config, "max_position_embeddings", None) or cfg.max_model_len
        self._max_ctx = min(cfg.max_model_len, model_max)
        # started on the first stream it can run (stages, which never stream, never start one)
        self.batcher = StreamBatcher(self.models, self.tok, self.eos_ids, cfg.batch_size, self._max_ctx, self._lock)

    def max_context(self) -> int:
        return self._max_ctx

    def prepare(self, req: GenRequest) -> list[int]:
        fmt = (req.response_format or {}).get("type", "text")
        if fmt != "text":
            raise EngineError(f"response_format {fmt!r} needs guided decoding: use backend vllm")
        return super().prepare(req)

    def _gen_kwargs(self, p: SamplingParams) -> dict:
        kw: dict[str, Any] = dict(
            max_new_tokens=p.max_tokens,
            pad_token_id=self.tok.pad_token_id,
            eos_token_id=sorted(self.eos_ids) or None,
            num_return_sequences=p.n,
        )
        if p.temperature > 0:
            kw.update(do_sample=True, temperature=p.temperature, top_p=p.top_p, top_k=0)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    def _batch(
        self, ids_list: list[list[int]], p: SamplingParams, adapter: str | None = None, logprobs: int | None = None
    ) -> list[GenResult]:
        torch = self.torch
        width = max(len(x) for x in ids_list)
        pad = self.tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids_list], device=self.device)
        attn = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids_list], device=self.device)
        kw = self._gen_kwargs(p)
        if p.stop:
            from transformers import StoppingCriteriaList

            kw["stopping_criteria"] = StoppingCriteriaList([_StopStrings(self.tok, width, p.stop)])
        if logprobs is not None:  # raw logits per step: log-probs of the model itself, not of the sampler
            kw.update(output_logits=True, return_dict_in_generate=True)
        with self._lock, self.batcher.paused(), torch.inference_mode():
            if p.seed is not None:  # under the lock: another thread's generate must not consume the RNG
                torch.manual_seed(p.seed)
            out = self.models[adapter].generate(input_ids=input_ids, attention_mask=attn, **kw)
        seqs = out.sequences if logprobs is not None else out
        gen = seqs[:, width:].tolist()  # one host transfer for the whole batch
        lsm = [torch.log_softmax(s.float(), dim=-1) for s in out.logits] if logprobs is not None else None
        results = []
        for i, prompt_ids in enumerate(ids_list):
            res = GenResult([], len(prompt_ids), logprobs=[] if lsm is not None else None)
            for row in range(i * p.n, (i + 1) * p.n):
                seq = gen[row]
                n_tok, ended = len(seq), False
                for j, t in enumerate(seq):
                    if t in self.eos_ids:
                        n_tok, ended = j + 1, True
                        break
                text, stopped = cut_at_stop(self.tok.decode(seq[:n_tok], skip_special_tokens=True), p.stop)
                if stopped:  # the tokens end with the one that completed the stop string, as vLLM's do
                    n_tok = self._stop_length(seq[:n_tok], p.stop)
                res.texts.append(text)
                res.completion_tokens.append(n_tok)
                res.finish_reasons.append("stop" if ended or stopped else "length")
                if lsm is not None and res.logprobs is not None:
                    res.logprobs.append(self._logprobs(lsm, row, seq[:n_tok], logprobs or 0))
            results.append(res)
        return results

    def _stop_length(self, seq: list[int], stops: list[str]) -> int:
        """The shortest prefix of `seq` whose text holds a stop string (the tokens a row generated
        after it, until the batch ended, are not part of its completion)."""
        lo, hi = 1, len(seq)
        while lo < hi:
            mid = (lo + hi) // 2
            if cut_at_stop(self.tok.decode(seq[:mid], skip_special_tokens=True), stops)[1]:
                hi = mid
            else:
                lo = mid + 1
        return hi

    def _logprobs(self, lsm: list, row: int, seq: list[int], k: int) -> list[TokenLogprob]:
        out = []
        for j, t in enumerate(seq):
            step = lsm[j][row]
            top = []
            if k > 0:
                vals, idx = step.topk(k)
                top = [(self.tok.decode([int(ti)]), float(v)) for v, ti in zip(vals.tolist(), idx.tolist())]
            out.append(TokenLogprob(self.tok.decode([t]), float(step[t]), top, t))
        return out

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        results: list[GenResult | None] = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, list[int]]]] = {}
        for i, req in enumerate(requests):
            try:
                ids = self.prepare(req)
            except Exception as e:
                results[i] = error_result(f"{type(e).__name__}: {e}", req.params.n)
                continue
            # rows share one generate() call only if params, adapter and log-prob request agree
            groups.setdefault((req.params.model_dump_json(), req.adapter, req.logprobs), []).append((i, ids))
        for (key, adapter, lp), members in groups.items():
            p = SamplingParams.model_validate(json.loads(key))
            members.sort(key=lambda m: len(m[1]))  # similar lengths together: less padding
            for s in range(0, len(members), self.cfg.batch_size):
                chunk = members[s : s + self.cfg.batch_size]
                for (i, _), r in zip(chunk, self._chunk([ids for _, ids in chunk], p, adapter, lp)):
                    results[i] = r
        return results  # type: ignore[return-value]  # every slot was filled above

    def _chunk(
        self, ids_list: list[list[int]], p: SamplingParams, adapter: str | None, lp: int | None
    ) -> list[GenResult]:
        try:
            return self._batch(ids_list, p, adapter, lp)
        except Exception:
            outs = []
            for ids in ids_list:
                try:
                    outs.extend(self._batch([ids], p, adapter, lp))
                except Exception as e:
                    outs.append(error_result(f"{type(e).__name__}: {e}", p.n, len(ids)))
            return outs

    def stream(self, request: GenRequest) -> Iterator[StreamChunk]:
        """Text deltas of one choice (n=1), then a final chunk with the finish reason and the exact
        token count; joined, the deltas equal `generate`'s text at temperature 0.

        With log-probs requested the completion is generated in one call and sent as one delta
        (transformers' streamer carries no scores)."""
        request = GenRequest(
            messages=request.messages,
            prompt=request.prompt,
            adapter=request.adapter,
            params=request.params.model_copy(update={"n": 1}),
            logprobs=request.logprobs,
            response_format=request.response_format,
        )
        ids = self.prepare(request)
        if request.logprobs is not None:
            [res] = self.generate([request])
            if not res.ok:
                raise EngineError(res.error)
            lps = res.logprobs[0] if res.logprobs else []
            yield StreamChunk(delta=res.texts[0], prompt_tokens=len(ids), logprobs=lps)
            yield StreamChunk(
                finish_reason=res.finish_reasons[0], prompt_tokens=len(ids), completion_tokens=res.completion_tokens[0]
            )
            return
        if self.batcher.can_run(request.adapter, request.params, request.logprobs):
            yield from self._batched_stream(request, ids)
        else:
            yield from self._stream_tokens(request, ids)

    def _batched_stream(self, request: GenRequest, ids: list[int]) -> Iterator[StreamChunk]:
        p = request.params
        state: dict = {"tokens": 0, "eos": False}
        deltas = self.batcher.stream(ids, p, request.adapter, state)
        try:
            for delta in stream_with_stops(deltas, p.stop):
                yield StreamChunk(delta=delta, prompt_tokens=len(ids))
        finally:
            deltas.close()  # a stop string or a gone consumer: the request leaves the batch
        length = state["tokens"] >= p.max_tokens and not state["eos"]
        yield StreamChunk(
            finish_reason="length" if length else "stop", prompt_tokens=len(ids), completion_tokens=state["tokens"]
        )

    def close(self) -> None:
        self.batcher.close()

    def _stream_tokens(self, request: GenRequest, ids: list[int]) -> Iterator[StreamChunk]:
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        p = request.params
        # the timeout turns a dead worker thread into an error instead of a consumer blocked forever
        streamer = TextIteratorStreamer(self.tok, skip_prompt=True, skip_special_tokens=True, timeout=600)
        flag = _StopFlag()
        criteria = [flag] + ([_StopStrings(self.tok, len(ids), p.stop)] if p.stop else [])
        kw = self._gen_kwargs(p)
        torch, model = self.torch, self.models[request.adapter]
        errors: list[BaseException] = []

        def work():
            try:
                if p.seed is not None:
                    torch.manual_seed(p.seed)
                with torch.inference_mode():
                    model.generate(
                        input_ids=torch.tensor([ids], device=self.device),
                        attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self.device),
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList(criteria),
                        **kw,
                    )
            except BaseException as e:
                errors.append(e)
                streamer.end()

        with self._lock, self.batcher.paused():
            thread = threading.Thread(target=work, daemon=True)
            thread.start()
            try:
                for delta in stream_with_stops(iter(streamer), p.stop):
                    yield StreamChunk(delta=delta, prompt_tokens=len(ids))
            finally:
                flag.event.set()  # consumer stopped early or a stop string was hit: end generation
                # No drain: the streamer's queue is unbounded so the worker never blocks, and
                # iterating an already-exhausted streamer again would wait forever.
                thread.join()
        if errors:
            raise errors[0]
        n_gen = max(flag.length - len(ids), 0)
        yield StreamChunk(
            finish_reason="length" if n_gen >= p.max_tokens else "stop", prompt_tokens=len(ids), completion_tokens=n_gen
        )
