"""Typed configuration of the serving app (`rayalign serve --config serve.yaml`).

Every knob that decides whether the endpoint survives load lives here: replica counts and the
autoscaling target, the per-replica request cap and the bounded queue behind it (over that the
caller gets 503, never a crash), the HTTP body limit, and the request-batching window.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from rayalign.config import Cfg
from rayalign.generate.engine import EngineConfig


class AutoscalingConfig(Cfg):
    """Ray Serve autoscaling of the engine deployment (one model copy per replica)."""

    min_replicas: int = Field(1, ge=0)  # fewest engine replicas (0: scale to zero when idle)
    max_replicas: int = Field(1, ge=1)  # most engine replicas
    # Ongoing requests per replica the autoscaler aims for; above it, replicas are added.
    target_ongoing_requests: float = Field(8.0, gt=0)
    upscale_delay_s: float = Field(10.0, ge=0)  # seconds above target before replicas are added
    downscale_delay_s: float = Field(120.0, ge=0)  # seconds below target before replicas are removed

    @model_validator(mode="after")
    def _order(self):
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        return self


class BatchConfig(Cfg):
    """`serve.batch` on the engine replica: concurrent requests share one engine call."""

    max_batch_size: int = Field(8, ge=1)  # most requests one engine call takes
    batch_wait_timeout_s: float = Field(0.01, ge=0)  # how long the first request waits for others to join its batch


class ServePASConfig(Cfg):
    """Prompt augmentation at serve time: a hint model writes a short complement to the user turn."""

    enabled: bool = False  # add a hint to each request's last user turn before it is answered
    # Model spec of the hint model; None reuses the served model itself.
    model: str | None = None
    max_hint_tokens: int = Field(64, ge=1)  # most tokens of a hint
    max_words: int = Field(30, ge=1)  # hints longer than this are dropped (PAS rule check)


class ServeConfig(Cfg):
    resource_fields: ClassVar[frozenset[str]] = frozenset(
        {
            "num_replicas",
            "autoscaling",
            "max_ongoing_requests",
            "max_queued_requests",
            "engine_num_cpus",
            "engine_num_gpus",
            "accelerator_type",
            "ingress_num_cpus",
            "ingress_max_ongoing_requests",
            "colocate_engine",
            "graceful_shutdown_timeout_s",
            "graceful_shutdown_wait_loop_s",
        }
    )

    model: str = "builtin:smollm2-135m-instruct"  # the model to serve: builtin:NAME, a checkpoint folder or a hub id
    # Name clients put in `model`; defaults to the spec itself.
    served_model_name: str | None = None
    adapter: str | None = None  # hf: one LoRA / Aligner folder merged into the served model
    # Adapters served by name beside the base (name -> folder): a request's `model` picks one.
    # LoRA through vLLM's multi-LoRA on `vllm`; LoRA and Aligner on `hf`.
    adapters: dict[str, str] = Field(default_factory=dict)
    backend: Literal["hf", "vllm"] = "hf"  # hf (transformers, any device) or vllm
    # Engine settings (dtype, max_model_len, tensor_parallel_size, vllm_kwargs, ...); model, backend,
    # adapter and adapters above take precedence over the same fields here.
    engine: EngineConfig = EngineConfig()

    host: str = "127.0.0.1"  # address to listen on (127.0.0.1: this machine only; 0.0.0.0 to expose it)
    port: int = Field(8000, ge=0, le=65535)  # HTTP port
    app_name: str = "rayalign"  # the Ray Serve application's name
    route_prefix: str = "/"  # URL prefix of the OpenAI-compatible routes
    api_key: str | None = None  # when set, requests need `Authorization: Bearer <key>`

    # Requests whose body is larger are refused with 413 before JSON parsing.
    max_body_bytes: int = Field(1_000_000, ge=1024)
    # Used when the client sends no max_tokens (bounded by the room left in the context).
    default_max_tokens: int = Field(256, ge=1)
    max_n: int = Field(8, ge=1)  # most choices (n) one request may ask for
    # Tokens a streamed chunk carries (as vLLM's `--stream-interval`): 1 sends every token as it is
    # decoded; k sends every k-th, cutting the serving path's CPU per token (replica, ingress,
    # proxy and client each handle one message per chunk) about k-fold at k-1 tokens of latency.
    stream_interval: int = Field(1, ge=1)
    # Time-based coalescing on top: a stream sends at most one chunk per this many milliseconds,
    # joining whatever tokens arrived meanwhile (0: every token; a stream's first token always goes
    # at once). Unlike the count, it bounds the messages per stream whatever the engine's speed.
    # "auto": 250 ms when the engine has no GPU, 0 with GPUs. On a CPU engine every chunk's work in
    # the serving path (replica, HTTP proxy, client) takes cores from decoding, while a stream gets
    # only a few tokens per second, so 250 ms joins 2-4 tokens at a latency nobody reads faster
    # than; measured on an idle 2-core box with 16 vLLM streams of up to 128 tokens: 0.80 of the
    # offline engine's tokens/s every token, 0.87 with "auto" (0.24 chunks per token). A GPU
    # decodes far faster than a Python event loop forwards messages on cores of its own, so there
    # every token goes out as vLLM's own server sends it (set a value to bound busy replicas).
    stream_interval_ms: float | Literal["auto"] = "auto"

    # Engine replicas: at most `max_ongoing_requests` in flight each, `max_queued_requests`
    # waiting in the caller; past both the ingress answers 503 with Retry-After.
    num_replicas: int = Field(1, ge=1)
    autoscaling: AutoscalingConfig | None = None  # replicas between min and max by load (None: num_replicas fixed)
    max_ongoing_requests: int = Field(16, ge=1)  # requests in flight per engine replica
    max_queued_requests: int = Field(64, ge=-1)  # requests waiting per caller past that (-1: unbounded); then 503
    engine_num_cpus: float = Field(1.0, ge=0)  # CPUs per engine replica
    # GPUs per engine replica; with engine.tensor_parallel_size > 1 each replica reserves a placement
    # group of that many GPU bundles (STRICT_PACK: one node) for vLLM's tensor-parallel workers.
    engine_num_gpus: float = Field(0.0, ge=0)
    accelerator_type: str | None = None  # e.g. "H100", "A10G": Ray's accelerator_type resource
    # The HTTP ingress only parses JSON and forwards: no CPU reservation so it never waits.
    ingress_num_cpus: float = Field(0.0, ge=0)
    ingress_max_ongoing_requests: int = Field(256, ge=1)  # requests in flight on the HTTP ingress

    # One deployment whose replicas hold the ingress and the engine together (the ingress awaits
    # the engine in its own process: one process and one Ray hop per streamed chunk fewer), placed
    # and scaled as the engine's replicas (engine_num_cpus/gpus, replicas, autoscaling); the engine's
    # max_ongoing_requests + max_queued_requests still bound it (503 past both). None = on for
    # `backend: vllm` (its async engine needs no threads or batching window), off for hf.
    colocate_engine: bool | None = None

    # Drain: a replica Serve stops (scale-down, redeploy, `serve delete`, its node drained before a
    # spot preemption) takes no new requests and lets the ones in flight, streams included, finish
    # for up to this many seconds before it is killed; keep it under the node's notice (AWS 120 s,
    # GCP 30 s) and above the longest stream you serve (max_tokens / tokens per second).
    graceful_shutdown_timeout_s: float = Field(25.0, ge=0)
    graceful_shutdown_wait_loop_s: float = Field(1.0, gt=0)  # how often a draining replica checks for requests left

    batch: BatchConfig = BatchConfig()  # request batching on the engine replica
    pas: ServePASConfig = ServePASConfig()  # prompt augmentation at serve time

    def colocated(self) -> bool:
        """Whether the ingress holds the engine itself (`colocate_engine`, resolved)."""
        return self.backend == "vllm" if self.colocate_engine is None else self.colocate_engine

    @property
    def stream_gap_s(self) -> float:
        """`stream_interval_ms` resolved ("auto": 250 ms on a CPU engine, 0 with GPUs), in seconds."""
        if self.stream_interval_ms == "auto":
            return 0.25 if self.engine_num_gpus == 0 else 0.0
        return self.stream_interval_ms / 1000

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model

    def engine_config(self) -> EngineConfig:
        """The engine this app serves: `engine` with the top-level model/backend/adapters applied."""
        return self.engine.model_copy(
            update={
                "model": self.model,
                "backend": self.backend,
                "adapter": self.adapter,
                "adapters": dict(self.adapters),
            }
        )

    @field_validator("stream_interval_ms")
    @classmethod
    def _gap(cls, v: float | str) -> float | str:
        if v != "auto" and float(v) < 0:
            raise ValueError(f"stream_interval_ms must be >= 0 milliseconds or 'auto', got {v}")
        return v

    @field_validator("adapters")
    @classmethod
    def _adapter_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name, path in v.items():
            if not name or not path or "=" in name:
                raise ValueError(f"adapter {name!r}={path!r}: give name=PATH with a non-empty name and folder")
        return v

    @model_validator(mode="after")
    def _prefix(self):
        if not self.route_prefix.startswith("/"):
            raise ValueError(f"route_prefix must start with '/', got {self.route_prefix!r}")
        if self.model_name in self.adapters:
            raise ValueError(f"adapter name {self.model_name!r} is the base model's name; rename the adapter")
        if self.backend == "vllm" and self.adapter:
            raise ValueError(
                "adapter (merged on load) is hf only; on vllm serve LoRA folders by name: adapters: "
                "{name: folder} (or --adapter name=PATH)"
            )
        if self.engine.tensor_parallel_size > 1 and self.engine_num_gpus < 1:
            raise ValueError(
                f"engine.tensor_parallel_size {self.engine.tensor_parallel_size} needs GPUs: "
                f"set engine_num_gpus: 1 (one GPU per tensor-parallel worker)"
            )
        return self
