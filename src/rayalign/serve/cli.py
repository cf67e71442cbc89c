"""`rayalign serve --model SPEC [--adapter NAME=PATH ...] [--host 127.0.0.1] [--port 8000] [--api-key KEY]
[--config serve.yaml] [key=value ...]` — serve an OpenAI-compatible endpoint until Ctrl-C or SIGTERM.

    rayalign serve --model builtin:smollm2-135m-instruct --port 8000
    rayalign serve --model BASE --backend vllm --adapter concise=runs/sft-lora --adapter polite=runs/apo-lora
    curl http://127.0.0.1:8000/v1/models          # the base and each adapter; `model` picks one

`--adapter PATH` without a name merges one adapter into the served model (hf backend, LoRA or Aligner).

Flags override the YAML file, `key=value` overrides (e.g. `batch.max_batch_size=4`) override both.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time

from rayalign.config import ConfigError, load_config
from rayalign.serve.config import ServeConfig


def parse_config(argv: list[str]) -> ServeConfig:
    p = argparse.ArgumentParser(prog="rayalign serve", description="OpenAI-compatible endpoint on Ray Serve")
    p.add_argument("--config", help="serve YAML (see rayjobs/configs/serve.yaml)")
    p.add_argument("--model", help="model spec: HF folder, builtin:smollm2-135m-instruct, tiny-random:llama")
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="serve an adapter by name (repeatable); a bare PATH is merged into the model (hf only)",
    )
    p.add_argument("--backend", choices=["hf", "vllm"])
    p.add_argument("--host", help="bind address (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int)
    p.add_argument(
        "--api-key",
        default=os.environ.get("RAYALIGN_API_KEY"),
        help="require 'Authorization: Bearer KEY' (default: $RAYALIGN_API_KEY)",
    )
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = p.parse_args(argv)
    flags = [
        f"{k}={v}"
        for k, v in (("model", args.model), ("backend", args.backend), ("host", args.host), ("port", args.port))
        if v is not None
    ]
    named = [a for a in args.adapter if "=" in a]
    merged = [a for a in args.adapter if "=" not in a]
    if len(merged) > 1:
        p.error("give at most one unnamed --adapter PATH; serve several as --adapter NAME=PATH")
    flags += [f"adapter={merged[0]}"] if merged else []
    cfg = load_config(ServeConfig, args.config, flags + list(args.overrides))
    if named:  # after parsing: adapter names may hold dots, which override paths cannot
        try:
            cfg.adapters = {**cfg.adapters, **dict(a.split("=", 1) for a in named)}
        except ValueError as e:
            raise ConfigError(f"--adapter: {e}") from None
    if args.api_key:
        cfg.api_key = args.api_key  # not through YAML parsing: a key like "123" must stay a string
    return cfg


def main(argv: list[str] | None = None) -> int:
    from rayalign.serve.server import start, stop

    cfg = parse_config(list(argv or []))
    # SIGTERM (kubectl, systemd, `ray job stop`) shuts down as cleanly as Ctrl-C does. SIGINT gets
    # the handler too: a process started with SIGINT ignored (a background job of a shell script,
    # some launchers) keeps it ignored, and Ctrl-C / `kill -INT` would never stop it.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_interrupt)
    try:
        url = start(cfg)
        signal.signal(signal.SIGTERM, _raise_interrupt)  # again: ray.init installs its own SIGTERM handler
        print(f"rayalign: serving {cfg.model_name} ({cfg.backend}) at {url}/v1  (Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("rayalign: shutting down", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
        import ray

        if ray.is_initialized():
            started = _children()  # a local cluster we started: its raylet, GCS, agents, workers
            stop(cfg)
            ray.shutdown()
            _reap(started)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _children() -> list:
    import psutil

    return psutil.Process().children(recursive=True)


def _reap(procs: list, grace_s: float = 10.0) -> None:
    """Ray's agents (dashboard, runtime-env) can outlive `ray.shutdown()` as orphans: wait for the
    processes this command started to exit, then terminate, then kill what is left."""
    import psutil

    _gone, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _gone, alive = psutil.wait_procs(alive, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
