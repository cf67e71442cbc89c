"""The HF backend on the tiny model: batching with left padding, n/seed, stop strings, per-row
errors, streaming (deltas join to the generate text) and token counting."""

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
