"""Generation engines behind one protocol (`protocol.py`): `hf` (transformers) and `vllm` (vLLM's
async, continuously batched engine).

    engine = make_engine(EngineConfig(backend="hf", model="tiny-random:llama"))
    [res] = engine.generate([GenRequest(messages=[{"role": "user", "content": "Hi"}])])
    for chunk in engine.stream(GenRequest(prompt="Once upon")):  # typed chunks, n=1
        print(chunk.delta, end="")
    engine.close()
"""

from __future__ import annotations

from rayalign.generate.engine.protocol import (
    AsyncEngine,
    Engine,
    EngineConfig,
    EngineError,
    GenRequest,
    GenResult,
    SamplingParams,
    StreamChunk,
    TokenLogprob,
    cut_at_stop,
    error_result,
    merge_chunks,
    stream_with_stops,
)
from rayalign.generate.engine.vllm import vllm_env_defaults  # imports vllm lazily

__all__ = [
    "AsyncEngine",
    "Engine",
    "EngineConfig",
    "EngineError",
    "GenRequest",
    "GenResult",
    "SamplingParams",
    "StreamChunk",
    "TokenLogprob",
    "cut_at_stop",
    "error_result",
    "make_engine",
    "merge_chunks",
    "stream_with_stops",
    "vllm_env_defaults",
]


def make_engine(cfg: EngineConfig) -> Engine:
    """The engine `cfg.backend` names (imports only that backend's libraries)."""
    if cfg.backend == "vllm":
        if cfg.adapter:
            from rayalign.config import ConfigError

            raise ConfigError(
                "engine.adapter (merged on load) is hf only; on vllm serve LoRA folders by name "
                "with engine.adapters {name: path}, or merge the adapter first"
            )
        from rayalign.generate.engine.vllm import VLLMEngine

        return VLLMEngine(cfg)
    from rayalign.generate.engine.hf import HFEngine

    return HFEngine(cfg)
