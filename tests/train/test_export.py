"""`rayalign export`: a sharded (DCP) checkpoint → a Hugging Face folder, tensors streamed in groups."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from train_helpers import base_config

from rayalign.models.export import export_checkpoint, main
from rayalign.train.config import TrainConfig
from rayalign.train.trainer import Trainer


def test_export_streams_shards_and_loads_in_plain_transformers(tmp_path, chat_packed):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = TrainConfig.model_validate(
        base_config(tmp_path / "run", chat_packed, max_steps=2, checkpoint={"export": False})
    )
    trainer = Trainer(cfg)
    result = trainer.train()
    trained = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    assert result.checkpoint is None  # export off: only the sharded checkpoint exists
    ckpt = result.details["checkpoint_dir"]

    out = tmp_path / "hf"
    # 0.0001 GB ≈ 107 kB per file: the tiny model's tensors are spread over many safetensors files
    assert main([ckpt, "--output", str(out), "--shard-gb", "0.0001"]) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 3 and all((out / f).exists() for f in files)
    assert "lm_head.weight" not in index["weight_map"]  # tied to the embeddings, re-tied on load

    model = AutoModelForCausalLM.from_pretrained(out)
    got = model.state_dict()
    assert got.keys() == trained.keys()
    for k in trained:
        assert torch.equal(got[k], trained[k]), k
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and f"rayalign serve --model {out}" in card
    assert json.loads((out / ".rayalign-export.json").read_text())["checkpoint"] == ckpt

    # one file when it fits, under the name transformers expects
    single = Path(export_checkpoint(ckpt, str(tmp_path / "one")))
    assert (single / "model.safetensors").exists() and not (single / "model.safetensors.index.json").exists()


def test_export_of_a_missing_checkpoint_says_what_to_give(tmp_path, capsys):
    assert main([str(tmp_path), "--output", str(tmp_path / "x")]) == 2
    assert "checkpoints/step-NNNNNN" in capsys.readouterr().out


def test_model_card_records_the_run(tmp_path):
    from rayalign.models.export import write_model_card

    write_model_card(
        tmp_path,
        {
            "base_model": "org/base",
            "stage": "sft",
            "name": "demo",
            "hyperparameters": {"lr": 0.001, "steps": 20},
            "data": {"packed rows": 12},
            "eval": {"final train loss": 1.25},
            "path": "s3://b/m",
        },
    )
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\nbase_model: org/base\n")
    for line in (
        "| lr | 0.001 |",
        "| steps | 20 |",
        "- packed rows: 12",
        "- final train loss: 1.25",
        "vllm serve s3://b/m",
    ):
        assert line in card
