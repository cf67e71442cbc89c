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

Seeds: a request's ``seed`` is its own, as in vLLM. Sampled rows with a seed are drawn by
`SeededSampler`: choice c of a request with seed s takes one uniform draw per token from its own
``torch.Generator`` seeded s + c (vLLM's per-choice seeds), and picks the token by inverse CDF over
the tempered, top-p-filtered softmax of the model's logits. Rows that differ only in their seeds
share one batched `generate` call, and a row's draws never depend on the other rows of the batch:
the same seed gives the same sample alone or batched, with other seeds, prompts and lengths, so
long as the model's logits for the row are the same in both batches. Left padding is masked, but
another batch shape may round differently in the kernels, and a token changes when its draw
falls within that rounding of a boundary between two tokens' cumulative probabilities. Measured once, by hand
(fp32, CPU, 32 new tokens, n = 4, each request alone vs all in one call): tiny-random llama, 16
prompts, every token the same and log-probs equal to the bit; SmolLM2-135M, 8 prompts, 31 of 32
samples the same, 977 of 1004 tokens before the first difference, log-probs within 3.2e-5. So a
seeded sample is reproducible exactly with the same batches, and otherwise up to such rare flips.
Unseeded rows sample from torch's global RNG, as transformers does.
"""

from __future__ import annotations

import json
import math
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


class SeededSampler:
    """A logits processor that samples every row with its own generator and hands generate a
    one-hot (the chosen token at 0, every other at −inf) for its greedy selection.

    Row r's token: weights exp((logit − max) ÷ ``temperature``) (the softmax, unnormalised), top-p
    filtered (the smallest set of most likely tokens whose mass reaches ``top_p``), then the first
    token whose cumulative weight (float64) exceeds u · total, u one ``torch.rand`` draw of the
    row's generator. A row consumes exactly one draw per step, whatever the batch holds, so its
    sample is a function of its seed and its own logits only. At temperature 1 and top_p 1 the
    distribution sampled is exactly the softmax of the logits, i.e. what the engine reports as
    log-probs. The two vocabulary-sized work buffers are kept across the steps of one generate
    call (allocating them anew each token cost more than the arithmetic on this CPU)."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        import torch

        self.torch = torch
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature, self.top_p = temperature, top_p
        self.buffers: tuple[Any, Any] | None = None  # float32 weights, float64 cumulative weights

    def weights(self, scores, out):
        """Each row's sampling weights (unnormalised, float32), written into `out`."""
        torch = self.torch
        torch.sub(scores, scores.amax(dim=-1, keepdim=True), out=out)
        if self.temperature != 1.0:
            out.div_(self.temperature)
        out.exp_()
        if self.top_p < 1.0:
            ranked, order = (out / out.sum(dim=-1, keepdim=True)).sort(dim=-1, descending=True, stable=True)
            before = ranked.cumsum(dim=-1) - ranked  # the mass of the more likely tokens
            ranked = ranked.masked_fill(before >= self.top_p, 0.0)  # the first token is always kept
            out.zero_().scatter_(-1, order, ranked)
        return out

    def __call__(self, input_ids, scores):  # no **kwargs: transformers would demand them
        torch = self.torch
        if scores.shape[0] != len(self.generators):
            raise RuntimeError(f"SeededSampler has {len(self.generators)} generators for {scores.shape[0]} rows")
        if self.buffers is None or self.buffers[0].shape != scores.shape:
            kw = dict(size=scores.shape, device=scores.device)
            self.buffers = (torch.empty(**kw, dtype=torch.float32), torch.empty(**kw, dtype=torch.float64))
        w, cdf = self.buffers
        torch.cumsum(self.weights(scores.float(), w), dim=-1, dtype=torch.float64, out=cdf)
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators])
        target = (u.to(cdf.device) * cdf[:, -1]).unsqueeze(1)
        tokens = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[1] - 1)
        return torch.full_like(scores, -math.inf).scatter_(1, tokens, 0.0)


def choice_seeds(seed: int, n: int) -> list[int]:
    """The generator seeds of a seeded request's n choices: seed + c for choice c (vLLM's rule)."""
    return [seed + c for c in range(n)]


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

    def _gen_kwargs(self, p: SamplingParams, seeds: list[int] | None = None) -> dict:
        """transformers' generate arguments; with ``seeds`` (one per prompt, sampled params) every
        row samples with its own generator (`SeededSampler`) and generate selects greedily."""
        kw: dict[str, Any] = dict(
            max_new_tokens=p.max_tokens,
            pad_token_id=self.tok.pad_token_id,
            eos_token_id=sorted(self.eos_ids) or None,
            num_return_sequences=p.n,
        )
        if p.temperature > 0 and seeds is None:
            kw.update(do_sample=True, temperature=p.temperature, top_p=p.top_p, top_k=0)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if p.temperature > 0 and seeds is not None:
            from transformers import LogitsProcessorList

            # greedy selection takes one sequence per input row: the caller repeats each prompt n
            # times in a row, so row i·n + c is choice c of prompt i
            rows = [r for s in seeds for r in choice_seeds(s, p.n)]
            sampler = SeededSampler(rows, p.temperature, p.top_p)
            kw.update(num_return_sequences=1, logits_processor=LogitsProcessorList([sampler]))
        return kw

    def _batch(
        self,
        ids_list: list[list[int]],
        p: SamplingParams,
        adapter: str | None = None,
        logprobs: int | None = None,
        seeds: list[int] | None = None,
    ) -> list[GenResult]:
        """One generate call; ``seeds``: each prompt's own seed (`SeededSampler`), else ``p.seed``
        for all of them, else torch's global RNG."""
        torch = self.torch
        if seeds is None and p.seed is not None:
            seeds = [p.seed] * len(ids_list)
        kw = self._gen_kwargs(p, seeds)
        copies = p.n // kw["num_return_sequences"]  # seeded sampling: each prompt's n rows are ours
        rows = [x for x in ids_list for _ in range(copies)]
        width = max(len(x) for x in rows)
        pad = self.tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in rows], device=self.device)
        attn = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in rows], device=self.device)
        if p.stop:
            from transformers import StoppingCriteriaList

            kw["stopping_criteria"] = StoppingCriteriaList([_StopStrings(self.tok, width, p.stop)])
        if logprobs is not None:  # raw logits per step: log-probs of the model itself, not of the sampler
            kw.update(output_logits=True, return_dict_in_generate=True)
        with self._lock, self.batcher.paused(), torch.inference_mode():
            out = self.models[adapter].generate(input_ids=input_ids, attention_mask=attn, **kw)
        seqs = out.sequences if logprobs is not None else out
        gen = seqs[:, width:].tolist()  # one host transfer for the whole batch
        # per step: the raw logits and their log-sum-exp (a log-prob is logit − lse; no vocabulary-sized
        # log-softmax tensor per step)
        lsm = [(s, torch.logsumexp(s.float(), dim=-1)) for s in out.logits] if logprobs is not None else None
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
            logits, lse = lsm[j][0][row], lsm[j][1][row]
            top = []
            if k > 0:
                vals, idx = logits.topk(k)
                top = [(self.tok.decode([int(ti)]), float(v - lse)) for v, ti in zip(vals, idx.tolist())]
            out.append(TokenLogprob(self.tok.decode([t]), float(logits[t] - lse), top, t))
        return out

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        results: list[GenResult | None] = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, list[int], int | None]]] = {}
        for i, req in enumerate(requests):
            try:
                ids = self.prepare(req)
            except Exception as e:
                results[i] = error_result(f"{type(e).__name__}: {e}", req.params.n)
                continue
            # rows share one generate() call only if params (but their seeds), adapter and log-prob
            # request agree; seeded and unseeded sampling stay apart, greedy rows ignore the seed
            seed = req.params.seed if req.params.temperature > 0 else None
            key = req.params.model_dump_json(exclude={"seed"})
            groups.setdefault((key, seed is not None, req.adapter, req.logprobs), []).append((i, ids, seed))
        for (key, _, adapter, lp), members in groups.items():
            p = SamplingParams.model_validate(json.loads(key))
            members.sort(key=lambda m: len(m[1]))  # similar lengths together: less padding
            for s in range(0, len(members), self.cfg.batch_size):
                chunk = members[s : s + self.cfg.batch_size]
                seeds = [m[2] for m in chunk if m[2] is not None] or None  # a group is all seeded or none
                out = self._chunk([m[1] for m in chunk], p, adapter, lp, seeds)
                for m, r in zip(chunk, out):
                    results[m[0]] = r
        return results  # type: ignore[return-value]  # every slot was filled above

    def _chunk(
        self, ids_list: list[list[int]], p: SamplingParams, adapter: str | None, lp: int | None, seeds: list[int] | None
    ) -> list[GenResult]:
        try:
            return self._batch(ids_list, p, adapter, lp, seeds)
        except Exception:
            outs = []
            for j, ids in enumerate(ids_list):
                try:
                    outs.extend(self._batch([ids], p, adapter, lp, None if seeds is None else [seeds[j]]))
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
        kw = self._gen_kwargs(p, None if p.seed is None else [p.seed])  # seeded: as generate samples it
        torch, model = self.torch, self.models[request.adapter]
        errors: list[BaseException] = []

        def work():
            try:
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
