"""The engine deployment's logic in-process (no Ray, no HTTP): PAS hook and admission checks.

`EngineServer` is a plain class that Serve wraps, so its synchronous parts run directly here
(`serve.batch` needs a replica: generation is covered by test_openai_server.py).
"""

from __future__ import annotations

import pytest

from rayalign.generate.engine import GenRequest, SamplingParams
from rayalign.serve import pas
from rayalign.serve.config import ServeConfig
from rayalign.serve.engine_server import EngineServer

TINY = "tiny-random:llama"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pas_server():
    return EngineServer(ServeConfig(model=TINY, pas={"enabled": True, "max_hint_tokens": 24}).model_dump())


def test_pas_appends_the_hint_models_complement(pas_server):
    msgs = [{"role": "user", "content": "Explain rain."}]
    got = pas_server._admit(GenRequest(messages=msgs, params=SamplingParams()), 8)
    # reference: the same engine asked the PAS stage's hint prompt, parsed by the PAS stage's rules
    [ref] = pas_server.engine.generate(
        [GenRequest(messages=pas.hint_messages(msgs, 30), params=SamplingParams(max_tokens=24))]
    )
    expected = pas.augment(msgs, pas.accept_hint(msgs, ref.texts[0], 30))
    assert got.messages == expected and got.params.max_tokens == 8
    assert pas_server.last_hint == pas.accept_hint(msgs, ref.texts[0], 30)


def test_admission_budget(pas_server):
    """ctx 2048, prompt p tokens: no max_tokens → min(default 256, 2048 - p); asking 2049 - p → 400."""
    srv = pas_server
    n = srv.engine.count_tokens(prompt="hello " * 1900)
    got = srv._admit(GenRequest(prompt="hello " * 1900, params=SamplingParams()), None)
    assert got.params.max_tokens == min(256, 2048 - n)
    err = srv._admit(GenRequest(prompt="hello " * 1900, params=SamplingParams()), 2048 - n + 1)
    assert err["status"] == 400 and err["error"]["code"] == "context_length_exceeded"


def test_adapter_flag_reaches_the_engine(tmp_path):
    """`--adapter` (an Aligner folder here, which vLLM cannot serve) is applied by the hf engine:
    with a non-zero gate the served model's greedy text differs from the base model's."""
    import torch

    from rayalign.models.adapters import PeftConfig, apply_peft, save_adapter
    from rayalign.models.loader import load_model

    pcfg = PeftConfig(method="aligner", tokens=1, start_layer=0)
    model = apply_peft(load_model(TINY), pcfg)
    with torch.no_grad():  # a trained-looking adapter: open the gate, move the prefix
        model.aligner.gate.fill_(1.0)
        model.aligner.prefix.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    folder = save_adapter(model, pcfg, tmp_path / "aligner")
    srv = EngineServer(ServeConfig(model=TINY, adapter=str(folder)).model_dump())
    base = EngineServer(ServeConfig(model=TINY).model_dump())
    assert getattr(srv.engine.model, "aligner", None) is not None
    req = GenRequest(prompt="Hi there", params=SamplingParams(max_tokens=8))
    [with_adapter], [plain] = srv.engine.generate([req]), base.engine.generate([req])
    assert with_adapter.ok and with_adapter.texts != plain.texts
