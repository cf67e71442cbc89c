"""`rayalign reference CONFIG.yaml`: reference-model log-probs for every pair, computed once.

    rayalign reference rayjobs/configs/prefer_tiny.yaml  # or: python rayjobs/reference.py CONFIG.yaml

A sharded Ray Data pass (`run_sharded`): an actor pool holds the frozen reference model, reads pairs
(raw jsonl/json/parquet validated as kind "pairs", or a prepared pairs dataset folder), tokenises
them if needed and adds ``ref_chosen_logp`` / ``ref_rejected_logp`` (summed log π_ref over the
response tokens) and the response token counts; with `max_logp_drop`, a pair whose chosen answer
is much less likely per token than its rejected one is quarantined (`unlikely_revision`). Training then reads these columns, so the
reference model never sits in training memory and is never run twice over the same pair.

The batch layout and the log-prob function are the training objective's own (`collate_pair_layout`,
`pair_logps`), which is what makes precomputed and on-the-fly reference log-probs agree.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from rayalign.config import Cfg, ConfigError, DType
from rayalign.data.dataset import is_dataset_folder
from rayalign.data.schemas import PAIR_TOKEN_SCHEMA
from rayalign.data.shards import PoolConfig, ProcessResult, dataset_files, quarantine_row, run_sharded
from rayalign.results import StageResult

REFERENCE_COLUMNS = [
    ("ref_chosen_logp", pa.float64()),
    ("ref_rejected_logp", pa.float64()),
    ("chosen_tokens", pa.int32()),
    ("rejected_tokens", pa.int32()),
    ("num_tokens", pa.int64()),
]  # both rows of the pair: the train loop's tokens/s


def reference_schema() -> pa.Schema:
    return pa.schema(list(PAIR_TOKEN_SCHEMA) + [pa.field(n, t) for n, t in REFERENCE_COLUMNS])


class ReferenceConfig(Cfg):
    resource_fields = frozenset({"batch_size", "pool"})

    inputs: list[str]  # raw pair files, or folders written by `prepare` (kind: pairs) / `reference`
    output: str  # the dataset folder: the pairs with their reference log-probs
    model: str = "builtin:smollm2-135m-instruct"  # the reference policy (usually the SFT checkpoint)
    adapter: str | None = None  # a LoRA/Aligner folder applied on top of `model`
    dtype: DType = "fp32"  # precision of the reference forward passes
    max_length: int = 1024  # prompt + longest response, in tokens; longer pairs are quarantined
    batch_size: int = 8  # pairs per forward pass (2 × rows: chosen and rejected together)
    pool: PoolConfig = PoolConfig()  # actor pool holding the reference model
    # quarantine (reason `unlikely_revision`) a pair whose chosen answer's per-token log-likelihood
    # under the reference model is more than this many nats below the rejected one's: a revision the
    # policy finds unnatural text (CLAIR pairs: the original is the policy's own answer). None: keep
    # all; the manifest's stats carry the summed per-token change either way (`logp_change_sum`)
    max_logp_drop: float | None = None


def split_inputs(inputs: list[str]) -> tuple[list[str], str | None]:
    """Dataset folders (holding manifest.json) become their parquet shards with no re-validation
    (kind None); raw files are validated as pairs. Mixing both in one run is refused."""
    folders = [i for i in inputs if is_dataset_folder(i)]
    if folders and len(folders) != len(inputs):
        raise ConfigError("inputs: mix of dataset folders and raw files; run them as two stages")
    if folders:
        return [f for d in folders for f in dataset_files(d)], None
    return list(inputs), "pairs"


class ReferenceProcessor:
    """Holds the tokenizer and the frozen reference model; scores pairs in length-sorted batches."""

    def __init__(self, cfg: ReferenceConfig):
        import torch

        from rayalign.models.loader import load_model, load_tokenizer

        self.cfg = cfg
        self.device = "cuda" if cfg.pool.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.tok = load_tokenizer(cfg.model)
        self.model = load_model(cfg.model, dtype=cfg.dtype, device=self.device, adapter=cfg.adapter)
        self.model.requires_grad_(False)
        self.output_schema = reference_schema()

    def _tokenised(self, row: dict) -> tuple[dict | None, tuple[str, str] | None]:
        from rayalign.data.tokenize import TemplateError, pair_ids

        if row.get("prompt_ids") is None:
            try:
                row = {**row, **pair_ids(self.tok, row)}
            except TemplateError as e:
                return None, ("template_error", str(e))
        longest = len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"]))
        if longest > self.cfg.max_length:
            return None, (
                "over_length",
                f"{longest} tokens > max_length {self.cfg.max_length}; raise max_length or shorten the pair",
            )
        return row, None

    def process(self, rows: list[dict]) -> ProcessResult:
        import torch

        from rayalign.objectives.pairs import collate_pair_layout, pair_logps

        good: list[dict] = []
        quarantine = []
        for i, row in enumerate(rows):
            out, reason = self._tokenised(row)
            if out is not None:
                good.append(out)
                continue
            code, detail = reason or ("unknown", "")
            quarantine.append(quarantine_row("reference", row.get("_index", i), code, detail, str(row.get("id", ""))))
        # batches of similar length waste less compute on padding; output keeps the input order
        order = sorted(
            range(len(good)),
            key=lambda i: len(good[i]["prompt_ids"]) + max(len(good[i]["chosen_ids"]), len(good[i]["rejected_ids"])),
        )
        stats = {"pairs": 0.0, "response_tokens": 0.0, "logp_change_sum": 0.0}
        bs = self.cfg.batch_size
        with torch.inference_mode():
            for start in range(0, len(order), bs):
                idx = order[start : start + bs]
                batch = collate_pair_layout([good[i] for i in idx], self.tok.pad_token_id)
                batch = {k: v.to(self.device) for k, v in batch.items()}
                chosen, rejected, n_c, n_r = (t.cpu().tolist() for t in pair_logps(self.model, batch))
                for j, i in enumerate(idx):
                    row = good[i]
                    row.update(
                        ref_chosen_logp=chosen[j],
                        ref_rejected_logp=rejected[j],
                        chosen_tokens=n_c[j],
                        rejected_tokens=n_r[j],
                        num_tokens=2 * len(row["prompt_ids"]) + n_c[j] + n_r[j],
                    )
                    stats["response_tokens"] += n_c[j] + n_r[j]
                    stats["logp_change_sum"] += logp_change(row)
        drop = self.cfg.max_logp_drop
        if drop is not None:
            for i, row in enumerate(good):
                if logp_change(row) < -drop:
                    detail = (
                        f"chosen per-token log-likelihood {logp_change(row):+.3f} nats vs rejected "
                        f"(max_logp_drop {drop}); raise max_logp_drop to keep such pairs"
                    )
                    quarantine.append(
                        quarantine_row(
                            "reference", row.get("_index", i), "unlikely_revision", detail, str(row.get("id"))
                        )
                    )
            good = [row for row in good if logp_change(row) >= -drop]
        stats["pairs"] = float(len(good))
        return ProcessResult(good, quarantine, stats)


def logp_change(row: dict) -> float:
    """Per-token log-likelihood of chosen minus rejected under the reference model (nats per token)."""
    chosen = row["ref_chosen_logp"] / max(row["chosen_tokens"], 1)
    return chosen - row["ref_rejected_logp"] / max(row["rejected_tokens"], 1)


def has_reference_columns(path: str | Path) -> bool:
    """True when a dataset folder (local or URI) already carries reference log-probs (the `reference` stage's output)."""
    import pyarrow.parquet as pq

    from rayalign import storage

    files = dataset_files(path) if storage.is_dir(storage.join(str(path), "data")) else []
    if not files:
        return False
    fs, inner = storage.filesystem(files[0])
    return "ref_chosen_logp" in pq.read_schema(inner, filesystem=fs).names


def run_reference(cfg: ReferenceConfig, log=print) -> StageResult:
    files, kind = split_inputs(cfg.inputs)
    manifest = run_sharded(
        "reference",
        files,
        cfg.output,
        lambda: ReferenceProcessor(cfg),
        kind=kind,
        pool=cfg.pool,
        config_hash=cfg.hash(),
        extra={"kind": "pairs", "model": cfg.model, "adapter": cfg.adapter},
        log=log,
    )
    manifest.log_counts(log, f"pairs with reference log-probs of {cfg.model}")
    return manifest.to_result(cfg.output, model=cfg.model, adapter=cfg.adapter)
