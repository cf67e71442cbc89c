"""The `reference` stage: every good pair gets reference log-probs, bad rows are quarantined, and the
Ray actor pool writes exactly what the in-process run writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rayalign.data.shards import read_dataset
from rayalign.prefer.reference import ReferenceConfig, has_reference_columns, run_reference

PAIRS = str(Path(__file__).resolve().parents[2] / "rayjobs" / "data" / "pairs.jsonl")
TINY = "tiny-random:llama"


@pytest.fixture
def in_process(pairs_reference) -> Path:
    """The session's in-process reference pass (conftest): 2 shards of 128 rows, batches of 16 pairs."""
    return pairs_reference


def test_counts_reconcile_and_bad_rows_are_quarantined(in_process):
    """The bundled file holds 220 good pairs and 7 bad rows, one per reason."""
    import json

    manifest = json.loads((in_process / "manifest.json").read_text())
    c = manifest["counts"]
    assert (c["in"], c["ok"], c["quarantined"], c["out_rows"]) == (227, 220, 7, 220)
    assert c["by_reason"] == {
        "chosen_equals_rejected": 1,
        "invalid_utf8": 1,
        "missing_field": 1,
        "not_an_object": 1,
        "null_value": 1,
        "unparseable_json": 1,
        "wrong_type": 1,
    }
    import pyarrow.parquet as pq

    files = sorted((in_process / "quarantine").glob("*.parquet"))
    reasons = [r for f in files for r in pq.read_table(f).column("reason").to_pylist()]
    assert sorted(reasons) == sorted(c["by_reason"])
    assert has_reference_columns(in_process)


def test_reference_logps_equal_the_model_scoring_each_pair_alone(in_process, tiny_model_path):
    """Spot-check 3 pairs against an unbatched forward with a full log-softmax (an independent computation)."""
    from transformers import AutoModelForCausalLM

    table = read_dataset(in_process)
    assert table.num_rows == 220
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    for row in table.take([0, 57, 219]).to_pylist():
        for side in ("chosen", "rejected"):
            ids = torch.tensor([row["prompt_ids"] + row[f"{side}_ids"]])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            n = len(row["prompt_ids"])
            expected = sum(float(logp[n - 1 + j, t]) for j, t in enumerate(row[f"{side}_ids"]))
            assert row[f"ref_{side}_logp"] == pytest.approx(expected, abs=1e-4)
            assert row[f"{side}_tokens"] == len(row[f"{side}_ids"])


@pytest.mark.timeout(240)
def test_ray_actor_pool_matches_in_process_and_resumes(ray_cluster, in_process, tmp_path):
    """2 actors at 0.5 CPU over 4 shards give the same rows and values; a re-run skips every shard."""
    cfg = ReferenceConfig(
        inputs=[PAIRS],
        output=str(tmp_path / "ray"),
        model=TINY,
        batch_size=8,
        pool={"workers": 2, "num_cpus": 0.5, "shard_rows": 64},
    )
    result = run_reference(cfg)
    assert result.counts.ok == 220 and result.details["shards"] == 4
    ray_rows = {r["id"]: r for r in read_dataset(tmp_path / "ray").to_pylist()}
    local_rows = {r["id"]: r for r in read_dataset(in_process).to_pylist()}
    assert ray_rows.keys() == local_rows.keys()
    worst = max(
        abs(ray_rows[k][f"ref_{s}_logp"] - local_rows[k][f"ref_{s}_logp"])
        for k in local_rows
        for s in ("chosen", "rejected")
    )
    assert worst <= 1e-4  # different batch compositions, same numbers up to fp32 rounding
    logs: list[str] = []
    again = run_reference(cfg, log=logs.append)
    assert again.counts == result.counts and any("already complete" in m for m in logs)


def test_dataset_folder_input_is_read_without_revalidation(in_process, tmp_path):
    """A folder written by `prepare` (kind: pairs) or `reference` is read as is: tokens reused, same values.

    The folder here holds the first 24 scored pairs of the session's reference pass.
    """
    import json

    import pyarrow.parquet as pq

    folder = tmp_path / "subset"
    (folder / "data").mkdir(parents=True)
    pq.write_table(read_dataset(in_process).slice(0, 24), folder / "data" / "shard-00000.parquet")
    (folder / "manifest.json").write_text(json.dumps({"stage": "reference", "complete": True}))
    out = tmp_path / "again"
    result = run_reference(
        ReferenceConfig(inputs=[str(folder)], output=str(out), model=TINY, batch_size=8, pool={"workers": 0}),
        log=lambda m: None,
    )
    assert result.counts.to_json() == {"in": 24, "ok": 24, "quarantined": 0, "out_rows": 24, "by_reason": {}}
    first = read_dataset(folder).column("ref_chosen_logp").to_pylist()
    again = read_dataset(out).column("ref_chosen_logp").to_pylist()
    assert max(abs(a - b) for a, b in zip(first, again)) <= 1e-4


def test_over_length_pairs_are_quarantined_with_the_fix(tmp_path):
    result = run_reference(
        ReferenceConfig(inputs=[PAIRS], output=str(tmp_path / "short"), model=TINY, max_length=40, pool={"workers": 0}),
        log=lambda m: None,
    )
    c = result.counts.to_json()
    assert c["by_reason"].get("over_length", 0) > 0 and c["in"] == c["ok"] + c["quarantined"] == 227
    import pyarrow.parquet as pq

    details = [
        d
        for f in (tmp_path / "short" / "quarantine").glob("*.parquet")
        for d, r in zip(pq.read_table(f).column("detail").to_pylist(), pq.read_table(f).column("reason").to_pylist())
        if r == "over_length"
    ]
    assert all("raise max_length" in d for d in details)


def test_unlikely_revisions_are_quarantined_by_per_token_change(in_process, tmp_path):
    """24 scored pairs; the threshold is the median per-token drop (between the 12th and 13th), so the pairs whose chosen answer is
    more than that many nats per token less likely than the rejected one (computed here from the
    stored columns) are exactly the quarantined ones, and in = ok + quarantined."""
    import json

    import pyarrow.parquet as pq

    from rayalign.prefer.reference import logp_change

    folder = tmp_path / "subset"
    (folder / "data").mkdir(parents=True)
    rows = read_dataset(in_process).slice(0, 24)
    pq.write_table(rows, folder / "data" / "shard-00000.parquet")
    (folder / "manifest.json").write_text(json.dumps({"stage": "reference", "complete": True}))
    changes = {r["id"]: logp_change(r) for r in rows.to_pylist()}
    drops = sorted(-c for c in changes.values())
    drop = (drops[11] + drops[12]) / 2  # midway: recomputed values within 1e-4 fall on the same side
    assert drops[12] - drops[11] > 1e-3
    expected_out = {k for k, c in changes.items() if c < -drop}
    assert 0 < len(expected_out) < 24
    cfg = ReferenceConfig(
        inputs=[str(folder)],
        output=str(tmp_path / "f"),
        model=TINY,
        batch_size=8,
        max_logp_drop=drop,
        pool={"workers": 0},
    )
    result = run_reference(cfg, log=lambda m: None)
    kept = {r["id"] for r in read_dataset(tmp_path / "f").to_pylist()}
    assert kept == set(changes) - expected_out
    c = result.counts.to_json()
    assert c["by_reason"] == {"unlikely_revision": len(expected_out)} and c["in"] == c["ok"] + c["quarantined"] == 24


def test_open_sides_of_a_clair_folder_are_scored_without_the_end_of_turn(tmp_path, tokenizer):
    """A CLAIR folder's `chosen_open` / `rejected_open` flags reach the tokens the reference model
    scores: an open side is its text's ids alone, a closed one ends with the end-of-turn."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from rayalign.generate.clair import CLAIR_SCHEMA

    folder = tmp_path / "clair"
    (folder / "data").mkdir(parents=True)
    base = {n: None for n in CLAIR_SCHEMA.names} | {"prompt": [{"role": "user", "content": "Tell me about tea."}]}
    rows = [
        base | {"id": "a", "chosen": "Tea is warm and", "rejected": "Tea is warm, and", "chosen_open": True},
        base | {"id": "b", "chosen": "Tea.", "rejected": "Tea is warm, and", "rejected_open": True},
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=CLAIR_SCHEMA), folder / "data" / "shard-00000.parquet")
    (folder / "manifest.json").write_text(json.dumps({"stage": "clair", "complete": True}))
    # the folder read as is, and its parquet files validated as pairs (how a pipeline names CLAIR's output)
    for name, inputs in (("as-is", [str(folder)]), ("validated", [str(folder / "data")])):
        out = tmp_path / name
        cfg = ReferenceConfig(inputs=inputs, output=str(out), model=TINY, pool={"workers": 0})
        run_reference(cfg, log=lambda m: None)
        got = {r["id"]: r for r in read_dataset(out).to_pylist()}
        texts = {k: (tokenizer.decode(r["chosen_ids"]), tokenizer.decode(r["rejected_ids"])) for k, r in got.items()}
        assert texts == {
            "a": ("Tea is warm and", "Tea is warm, and<|im_end|>\n"),
            "b": ("Tea.<|im_end|>\n", "Tea is warm, and"),
        }, name
        assert got["a"]["chosen_tokens"] == len(got["a"]["chosen_ids"])
