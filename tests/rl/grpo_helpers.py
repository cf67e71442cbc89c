"""Data and configs for the GRPO tests (a plain module: conftest files cannot be imported)."""

from __future__ import annotations

import json
from pathlib import Path

TINY = "tiny-random:llama"
TOPICS = ["cats", "rain", "bread", "music", "rivers", "stars", "chess", "tea", "snow", "maps", "trees", "clocks"]
OPENERS = ["Sure", "Okay", "Well", "Yes"]  # one in four SFT answers starts with "Sure"


def write_prompts(path: Path, n: int = 8) -> str:
    """Prompts whose meta asks the answer to start with "Sure" (checked by the eval suite's check)."""
    with path.open("w") as fh:
        for i in range(n):
            row = {
                "id": f"p{i}",
                "prompt": f"Tell me about {TOPICS[i % len(TOPICS)]}.",
                "meta": {"constraints": [{"kind": "start_with", "phrase": "Sure"}]},
            }
            fh.write(json.dumps(row) + "\n")
    return str(path)


def write_chats(path: Path, n: int = 48) -> str:
    """SFT answers to the same kind of prompt; openers cycle so exactly 25% start with "Sure"."""
    with path.open("w") as fh:
        for i in range(n):
            opener = OPENERS[i % len(OPENERS)]
            messages = [
                {"role": "user", "content": f"Tell me about {TOPICS[(i // 4) % len(TOPICS)]}."},
                {"role": "assistant", "content": f"{opener} it is nice."},
            ]
            fh.write(json.dumps({"id": f"c{i}", "messages": messages}) + "\n")
    return str(path)


def grpo_config(out: Path, model: str, prompts: str, **overrides) -> dict:
    cfg = {
        "model": model,
        "output_dir": str(out),
        "prompts": [prompts],
        "group_size": 4,
        "prompts_per_step": 2,
        "max_steps": 3,
        "seed": 3,
        "progress": False,
        "rollout": {"temperature": 1.0, "max_tokens": 6},
        "optim": {"lr": 1e-3, "min_lr_ratio": 1.0, "max_grad_norm": 1.0},
    }
    cfg.update(overrides)
    return cfg
