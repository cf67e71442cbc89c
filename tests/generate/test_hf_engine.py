"""The HF backend on the tiny model: batching with left padding, n/seed, stop strings, per-row
errors, streaming (deltas join to the generate text) and token counting; seeded rows batched
together, each sampled with its own generator from the distribution its log-probs report."""

from __future__ import annotations

import pytest

from rayalign.generate.engine import (
    Engine,
    EngineConfig,
    GenRequest,
    SamplingParams,
    cut_at_stop,
    make_engine,
    stream_with_stops,
)

TINY = "tiny-random:llama"
MSGS = [
    [{"role": "user", "content": "Hello there, how are you?"}],
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour of the sky at noon."}],
]


@pytest.fixture(scope="module")
def engine():
    return make_engine(EngineConfig(backend="hf", model=TINY, max_model_len=256, batch_size=8))


def test_protocol_and_counts(engine, tokenizer):
    assert isinstance(engine, Engine) and engine.model_name == TINY
    ids = tokenizer.apply_chat_template(MSGS[0], tokenize=False, add_generation_prompt=True)
    assert engine.count_tokens(messages=MSGS[0]) == len(tokenizer(ids, add_special_tokens=False)["input_ids"])
    assert engine.count_tokens(prompt="one two") == len(tokenizer("one two")["input_ids"])
    assert engine.max_context() == 256


def test_batched_left_padding_equals_one_by_one(engine):
    """Greedy outputs must not depend on batch composition: padding is on the left and masked."""
    p = SamplingParams(max_tokens=10)
    reqs = [GenRequest(messages=m, params=p) for m in MSGS]
    batched = engine.generate(reqs)
    single = [engine.generate([r])[0] for r in reqs]
    assert [b.texts for b in batched] == [s.texts for s in single]
    assert [b.completion_tokens for b in batched] == [s.completion_tokens for s in single] == [[10]] * 3
    assert all(b.finish_reasons == ["length"] for b in batched)
    assert [b.prompt_tokens for b in batched] == [engine.count_tokens(messages=m) for m in MSGS]


def test_n_seed_and_errors_are_rows(engine):
    samp = SamplingParams(max_tokens=6, temperature=1.0, n=3, seed=7)
    reqs = [
        GenRequest(prompt="Once upon a time", params=samp),
        GenRequest(prompt="word " * 300, params=SamplingParams(max_tokens=6)),  # 301 + 6 > 256
        GenRequest(params=SamplingParams(max_tokens=6)),
    ]  # neither messages nor prompt
    a, too_long, empty = engine.generate(reqs)
    assert a.ok and len(a.texts) == 3 and len(set(a.texts)) > 1  # three different samples
    assert engine.generate([reqs[0]])[0].texts == a.texts  # the seed reproduces them
    assert not too_long.ok and "max_model_len 256" in too_long.error and too_long.finish_reasons == ["error"]
    assert not empty.ok and "neither messages nor prompt" in empty.error


def _token_ids(res) -> list[list[int]]:
    return [[t.token_id for t in choice] for choice in res.logprobs]


def _seeded(messages, seed: int, n: int = 2, **params) -> GenRequest:
    params = {"temperature": 1.0, "max_tokens": 16, **params}
    return GenRequest(messages=messages, params=SamplingParams(n=n, seed=seed, **params), logprobs=0)


def test_seeded_rows_share_one_generate_and_keep_their_samples(engine, monkeypatch):
    """Rows that differ only in their seeds run in ONE generate call, and each row's sample is a
    function of its own seed: the same alone, batched with other seeds and prompt lengths, or in
    another batch; choice c of seed s is the sample of seed s + c."""
    model = engine.models[None]
    real, rows_per_call = model.generate, []

    def counted(*args, **kwargs):
        rows_per_call.append(kwargs["input_ids"].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", counted)
    batch = [_seeded(m, seed) for m, seed in zip(MSGS, (11, 21, 31))]
    together = engine.generate(batch)
    assert rows_per_call == [6]  # 3 prompts × 2 choices, one call
    alone = [engine.generate([r])[0] for r in batch]
    other = engine.generate([_seeded(MSGS[1], 99), *batch[::-1], _seeded(MSGS[0], 7)])
    assert rows_per_call[-1] == 5 * 2
    for t, a, o in zip(together, alone, other[1:4][::-1]):
        assert _token_ids(t) == _token_ids(a) == _token_ids(o) and t.texts == a.texts == o.texts
        assert len(_token_ids(t)[0]) > 0
    # choice 1 of seed 11 is choice 0 of seed 12; every seed and prompt its own sample
    [single] = engine.generate([_seeded(MSGS[0], 12, n=1)])
    assert _token_ids(single)[0] == _token_ids(together[0])[1]
    samples = [tuple(c) for r in together for c in _token_ids(r)]
    assert len(set(samples)) == 6
    # unseeded sampling and greedy rows keep their own calls (torch's global RNG; argmax)
    rows_per_call.clear()
    unseeded = GenRequest(messages=MSGS[0], params=SamplingParams(temperature=1.0, max_tokens=4))
    greedy = GenRequest(messages=MSGS[0], params=SamplingParams(max_tokens=4, seed=3))
    engine.generate([batch[0], unseeded, greedy, GenRequest(messages=MSGS[1], params=SamplingParams(max_tokens=4))])
    assert sorted(rows_per_call) == [1, 2, 2]


def test_seeded_samples_come_from_the_reported_distribution(engine):
    """Each seeded token is the inverse CDF, at the row's own uniform draw (``torch.Generator(seed)``,
    one float64 per step), of the softmax of the model's logits (checked against a forward pass
    over prompt + completion, to float rounding), and the reported log-prob is that softmax's log:
    the distribution TIS weighs by is the one sampled. With temperature 0.7 and top_p 0.9 the CDF
    is the tempered nucleus, built here by hand."""
    import torch

    ids = engine.render_ids(messages=MSGS[2])
    for temperature, top_p in ((1.0, 1.0), (0.7, 0.9)):
        req = _seeded(MSGS[2], 5, n=1, max_tokens=12, temperature=temperature, top_p=top_p)
        [res] = engine.generate([req])
        got = _token_ids(res)[0]
        assert len(got) == res.completion_tokens[0] > 3
        with torch.inference_mode():
            logits = engine.model(torch.tensor([ids + got])).logits[0, len(ids) - 1 : -1].double()
        draws = torch.Generator().manual_seed(5)
        for j, token in enumerate(got):
            probs = torch.softmax(logits[j] / temperature, -1).tolist()
            kept, mass = [0.0] * len(probs), 0.0
            for t in sorted(range(len(probs)), key=lambda t: -probs[t]):  # most likely first
                if mass >= top_p:
                    break
                kept[t], mass = probs[t], mass + probs[t]
            below = sum(kept[:token])
            u = torch.rand(1, generator=draws, dtype=torch.float64).item() * sum(kept)
            assert kept[token] > 0 and below - 1e-5 <= u <= below + kept[token] + 1e-5, (temperature, j)
            if temperature == 1.0:
                assert abs(res.logprobs[0][j].logprob - float(torch.log_softmax(logits[j], -1)[token])) <= 1e-4


def test_seeded_sampler_frequencies():
    """`SeededSampler` on a hand-made 4-token distribution, 4000 rows (one seed each): token
    frequencies match p = (0.1, 0.2, 0.3, 0.4); at temperature 0.5 the weights become p² / Σp²
    = (1, 4, 9, 16) / 30, and top_p 0.6 keeps the two most likely (16/30 + 9/30 ≥ 0.6): 16/25 and
    9/25. The output is a one-hot for greedy selection."""
    import math

    import torch

    from rayalign.generate.engine.hf import SeededSampler

    rows = 4000
    scores = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]])).repeat(rows, 1)
    for (temperature, top_p), want in {(1.0, 1.0): [0.1, 0.2, 0.3, 0.4], (0.5, 0.6): [0, 0, 9 / 25, 16 / 25]}.items():
        out = SeededSampler(list(range(rows)), temperature, top_p)(None, scores)
        assert ((out == 0).sum(-1) == 1).all() and ((out == -math.inf).sum(-1) == 3).all()
        freq = torch.bincount(out.argmax(-1), minlength=4).double() / rows
        for f, p in zip(freq.tolist(), want):
            assert abs(f - p) <= 4 * math.sqrt(p * (1 - p) / rows) + 1e-12, (temperature, freq)
    # the same seeds again: the same tokens (a row's draws are its generator's)
    a = SeededSampler([1, 2, 3], 1.0, 1.0)(None, scores[:3])
    b = SeededSampler([3, 1, 2], 1.0, 1.0)(None, scores[:3])
    assert a.argmax(-1).tolist() == b.argmax(-1)[[1, 2, 0]].tolist()


def test_stop_strings_generate_and_stream_agree(engine):
    req = GenRequest(messages=MSGS[0], params=SamplingParams(max_tokens=12))
    full = engine.generate([req])[0].texts[0]
    stop = full[4:7]  # a stop string the greedy output is known to contain
    cut = full[: full.find(stop)]
    sreq = GenRequest(messages=MSGS[0], params=SamplingParams(max_tokens=12, stop=[stop]))
    res = engine.generate([sreq])[0]
    assert res.texts == [cut] and res.finish_reasons == ["stop"]
    assert "".join(c.delta for c in engine.stream(sreq)) == cut


def test_stream_deltas_join_to_generate(engine):
    for req in (
        GenRequest(messages=MSGS[2], params=SamplingParams(max_tokens=12)),
        GenRequest(prompt="The capital of", params=SamplingParams(max_tokens=12)),
    ):
        chunks = list(engine.stream(req))
        deltas = [c.delta for c in chunks if c.finish_reason is None]
        assert len(deltas) > 1
        [ref] = engine.generate([req])
        assert "".join(deltas) == ref.texts[0]
        # the final chunk carries the finish reason and the exact token count
        assert (chunks[-1].finish_reason, chunks[-1].completion_tokens) == (
            ref.finish_reasons[0],
            ref.completion_tokens[0],
        )
    # abandoning a stream early releases the engine (the worker thread is told to stop)
    it = engine.stream(GenRequest(prompt="a", params=SamplingParams(max_tokens=50)))
    next(it)
    it.close()
    assert engine.generate([GenRequest(prompt="a", params=SamplingParams(max_tokens=2))])[0].ok


def test_stop_helpers():
    assert cut_at_stop("abc. def\n", ["\n", "."]) == ("abc", True)
    assert cut_at_stop("abc", ["x", ""]) == ("abc", False)
    # a stop string split across deltas is never emitted, and no text after it
    assert "".join(stream_with_stops(iter(["ab", "c<", "/s", ">tail"]), ["</s>"])) == "abc"
    assert "".join(stream_with_stops(iter(["ab", "c<"]), ["</s>"])) == "abc<"


def test_adapter_is_applied(engine, tmp_path):
    """A LoRA folder given as `adapter` changes the greedy output exactly as the peft model does."""
    import torch
    from peft import LoraConfig, get_peft_model

    from rayalign.models.loader import load_model

    torch.manual_seed(0)
    lora = get_peft_model(
        load_model(TINY), LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    lora.save_pretrained(str(tmp_path / "lora"))
    adapted = make_engine(EngineConfig(backend="hf", model=TINY, max_model_len=256, adapter=str(tmp_path / "lora")))
    req = GenRequest(messages=MSGS[0], params=SamplingParams(max_tokens=8))
    got = adapted.generate([req])[0].texts[0]
    ids = engine.render_ids(messages=MSGS[0])
    with torch.inference_mode():
        ref = lora.eval().generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=engine.tok.pad_token_id,
        )
    assert got == engine.tok.decode(ref[0, len(ids) :], skip_special_tokens=True)
    assert got != engine.generate([req])[0].texts[0]


def test_logprobs_equal_a_forward_pass(engine):
    """Each generated token's log-prob (and the top-k) equals log_softmax of one forward pass over
    prompt + completion: the model's own distribution, not the sampler's."""
    import torch

    req = GenRequest(messages=MSGS[1], params=SamplingParams(max_tokens=6), logprobs=3)
    [res] = engine.generate([req])
    ids = engine.render_ids(messages=MSGS[1])
    with torch.inference_mode():
        out = engine.model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=engine.tok.pad_token_id,
        )
        gen = out[0, len(ids) :].tolist()
        logits = engine.model(torch.tensor([ids + gen])).logits[0, len(ids) - 1 : -1].float()
    ref = torch.log_softmax(logits, -1)
    got = res.logprobs[0]
    assert len(got) == len(gen) == res.completion_tokens[0]
    assert [lp.token_id for lp in got] == gen
    for j, (t, lp) in enumerate(zip(gen, got)):
        assert abs(lp.logprob - float(ref[j, t])) <= 1e-4
        assert [round(v, 4) for _, v in lp.top] == [round(float(v), 4) for v in ref[j].topk(3).values]
    # streamed with log-probs: one delta carrying the same values
    chunks = list(engine.stream(req))
    assert chunks[0].delta == res.texts[0] and [c.logprob for c in chunks[0].logprobs] == [c.logprob for c in got]


def test_response_format_is_refused_on_hf(engine):
    [res] = engine.generate([GenRequest(prompt="x", response_format={"type": "json_object"})])
    assert not res.ok and "backend vllm" in res.error
