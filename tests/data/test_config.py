"""Config errors fail before any work, naming the file, the field path, the bad value and what is allowed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rayalign.config import ConfigError, apply_overrides, load_config, parse_override
from rayalign.data.prepare import PrepareConfig


def write(tmp_path, text: str):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_file_path_and_allowed_keys(tmp_path):
    p = write(tmp_path, "kind: chat\ninputs: [a.jsonl]\noutput: out\npool: {workers: 1, shardrows: 5}\n")
    with pytest.raises(ConfigError) as e:
        load_config(PrepareConfig, p)
    msg = str(e.value)
    assert str(p) in msg
    assert "pool.shardrows: unknown key" in msg
    assert "allowed keys here: limit, num_cpus, num_gpus, resources, shard_rows, shards_in_flight, workers" in msg


def test_bad_literal_names_value_and_choices(tmp_path):
    p = write(tmp_path, "kind: chats\ninputs: [a.jsonl]\noutput: out\n")
    with pytest.raises(ConfigError) as e:
        load_config(PrepareConfig, p)
    msg = str(e.value)
    assert "kind:" in msg and "'chats'" in msg
    assert "'corpus', 'chat', 'prompts' or 'pairs'" in msg


def test_missing_field_and_wrong_type(tmp_path):
    p = write(tmp_path, "kind: chat\nmax_length: lots\n")
    with pytest.raises(ConfigError) as e:
        load_config(PrepareConfig, p)
    msg = str(e.value)
    assert "inputs: required field is missing" in msg
    assert "output: required field is missing" in msg
    assert "max_length:" in msg and "'lots'" in msg


def test_overrides_are_typed_and_nested():
    assert parse_override("pool.workers=2") == (["pool", "workers"], 2)
    assert parse_override("inputs=[a, b]") == (["inputs"], ["a", "b"])
    data = apply_overrides({"kind": "chat"}, ["pool.shard_rows=8", "pack=false"])
    assert data == {"kind": "chat", "pool": {"shard_rows": 8}, "pack": False}
    with pytest.raises(ConfigError, match=r"expected key\.path=value"):
        parse_override("pool.workers")


def test_override_into_scalar_is_an_error():
    with pytest.raises(ConfigError, match="'kind' is a str, not a section"):
        apply_overrides({"kind": "chat"}, ["kind.x=1"])


def test_cli_exits_2_on_config_error(tmp_path):
    p = write(tmp_path, "kind: chat\ninputs: [a.jsonl]\noutput: out\nbogus: 1\n")
    r = subprocess.run([sys.executable, "-m", "rayalign.cli", "prepare", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "bogus: unknown key" in r.stderr


def test_cli_missing_file_exits_2(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "rayalign.cli", "prepare", str(tmp_path / "nope.yaml")], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert "config file not found" in r.stderr
