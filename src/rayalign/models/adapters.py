"""Parameter-efficient fine-tuning: LoRA (through `peft`) and Aligner (global prefix tokens).

`apply_peft` freezes the base model and adds the trainable parameters; `save_adapter` writes the
adapter folder (peft format for LoRA, `aligner_config.json` + safetensors for Aligner); `apply_adapter`
reads such a folder back onto a loaded base model, telling the two kinds apart by their config file.
Aligner's functions live in `rayalign.models.aligner` and are imported only when used, so LoRA and
plain training work whether or not that module is present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from rayalign.config import Cfg


class PeftConfig(Cfg):
    # none: full fine-tuning; lora: low-rank adapters; aligner: learned prefix tokens
    method: Literal["none", "lora", "aligner"] = "none"
    # LoRA
    r: int = 8  # LoRA rank
    alpha: int = 16  # LoRA scaling numerator (scale = alpha / r)
    dropout: float = 0.0  # LoRA dropout on the adapter input
    # LoRA: the linear layers that get adapters
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    merge: bool = False  # save the final model with the LoRA weights folded in (a plain HF folder)
    # Aligner
    tokens: int = 1  # Aligner: learned tokens
    start_layer: int = 2  # Aligner: the first decoder layer that attends to the prefix tokens


def _aligner():
    try:
        from rayalign.models import aligner
    except ImportError as e:  # the module is written by another component; fail with a clear message
        raise ImportError(f"peft method 'aligner' needs rayalign.models.aligner ({e})") from None
    return aligner


def lora_config(cfg: PeftConfig, task_type: str = "CAUSAL_LM"):
    """peft's `LoraConfig` of `cfg` (also what an adapter folder's adapter_config.json holds)."""
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type=task_type,
    )


def apply_peft(model, cfg: PeftConfig):
    """Return the model with frozen base weights and the adapter's trainable parameters added."""
    if cfg.method == "none":
        return model
    if cfg.method == "lora":
        from peft import get_peft_model

        lora = lora_config(cfg, "CAUSAL_LM" if hasattr(model, "generate") else "SEQ_CLS")
        return get_peft_model(model, lora)  # freezes everything but the LoRA matrices
    for p in model.parameters():
        p.requires_grad_(False)
    return _aligner().add_aligner(model, tokens=cfg.tokens, start_layer=cfg.start_layer)


def save_adapter(model, cfg: PeftConfig, out_dir: str | Path, state_dict: dict | None = None) -> str:
    """Write the adapter folder. `state_dict` (full, gathered) is given when the model is FSDP-sharded."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.method == "lora":
        if state_dict is not None:
            from peft import get_peft_model_state_dict

            model.save_pretrained(str(out), state_dict=get_peft_model_state_dict(model, state_dict=state_dict))
        else:
            model.save_pretrained(str(out))
    elif cfg.method == "aligner":
        _aligner().save_aligner(model, str(out), state_dict=state_dict)
    else:
        raise ValueError("save_adapter: peft.method is 'none', there is no adapter to save")
    return str(out)


def apply_adapter(model, path: str | Path, trainable: bool = False):
    """Load an adapter folder onto `model`: peft LoRA (adapter_config.json) or Aligner (aligner_config.json)."""
    p = Path(path)
    if (p / "adapter_config.json").exists():
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(p), is_trainable=trainable)
    if (p / "aligner_config.json").exists():
        return _aligner().load_aligner(model, str(p))
    raise FileNotFoundError(
        f"{p} is not an adapter folder: expected adapter_config.json (LoRA, peft format) or "
        f"aligner_config.json (Aligner)"
    )


def merge_lora(model):
    """Fold LoRA weights into the base Linear layers and drop the peft wrapper."""
    return model.merge_and_unload()
