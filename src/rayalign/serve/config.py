"""Typed configuration of the serving app (`rayalign serve --config serve.yaml`).

Every knob that decides whether the endpoint survives load lives here: replica counts and the
autoscaling target, the per-replica request cap and the bounded queue behind it (over that the
caller gets 503, never a crash), the HTTP body limit, and the request-batching window.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayalign.config import Cfg


class AutoscalingCfg(Cfg):
    """Ray Serve autoscaling of the engine deployment (one model copy per replica)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    # Ongoing requests per replica the autoscaler aims for; above it, replicas are added.
    target_ongoing_requests: float = Field(8.0, gt=0)
    upscale_delay_s: float = Field(10.0, ge=0)
    downscale_delay_s: float = Field(120.0, ge=0)

    @model_validator(mode="after")
    def _order(self):
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        return self


class BatchCfg(Cfg):
    """`serve.batch` on the engine replica: concurrent requests share one engine call."""

    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0)


class PasCfg(Cfg):
    """Prompt augmentation at serve time: a hint model writes a short complement to the user turn."""

    enabled: bool = False
    # Model spec of the hint model; None reuses the served model itself.
    model: str | None = None
    max_hint_tokens: int = Field(64, ge=1)
    max_words: int = Field(30, ge=1)  # hints longer than this are dropped (PAS rule check)


class ServeConfig(Cfg):
    model: str = "builtin:smollm2-135m-instruct"  # the embedded default; tests pass tiny-random:llama
    # Name clients put in `model`; defaults to the spec itself.
    served_model_name: str | None = None
    adapter: str | None = None
    backend: Literal["hf", "vllm"] = "hf"
    # Extra keyword arguments for the backend's EngineConfig (dtype, max_model_len, ...).
    engine: dict = {}

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    app_name: str = "rayalign"
    route_prefix: str = "/"
    api_key: str | None = None

    # Requests whose body is larger are refused with 413 before JSON parsing.
    max_body_bytes: int = Field(1_000_000, ge=1024)
    # Used when the client sends no max_tokens (bounded by the room left in the context).
    default_max_tokens: int = Field(256, ge=1)
    max_n: int = Field(8, ge=1)

    # Engine replicas: at most `max_ongoing_requests` in flight each, `max_queued_requests`
    # waiting in the caller; past both the ingress answers 503 with Retry-After.
    num_replicas: int = Field(1, ge=1)
    autoscaling: AutoscalingCfg | None = None
    max_ongoing_requests: int = Field(16, ge=1)
    max_queued_requests: int = Field(64, ge=-1)
    engine_num_cpus: float = Field(1.0, ge=0)
    # The HTTP ingress only parses JSON and forwards: no CPU reservation so it never waits.
    ingress_num_cpus: float = Field(0.0, ge=0)
    ingress_max_ongoing_requests: int = Field(256, ge=1)

    batch: BatchCfg = BatchCfg()
    pas: PasCfg = PasCfg()

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model

    @model_validator(mode="after")
    def _prefix(self):
        if not self.route_prefix.startswith("/"):
            raise ValueError(f"route_prefix must start with '/', got {self.route_prefix!r}")
        return self
