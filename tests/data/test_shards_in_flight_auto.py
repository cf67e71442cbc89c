"""`pool.shards_in_flight: auto`: the shards in flight per actor follow from the engine's capacity
and the shard size (hand-worked numbers), an explicit number wins, and the setting stays out of the
config hash."""

from __future__ import annotations

import pytest

from rayalign.data.shards import MAX_AUTO_IN_FLIGHT, PoolConfig, auto_in_flight, resolve_in_flight
from rayalign.generate.engine import EngineConfig
from rayalign.generate.sample import SampleConfig


@pytest.mark.parametrize(
    ("capacity", "shard_rows", "pending", "expected"),
    [
        (8, 4, 100, 4),  # 2*8/4: 16 rows queued for 8 running
        (16, 4, 100, 8),
        (8, 3, 100, 6),  # ceil(16/3)
        (128, 4, 1000, MAX_AUTO_IN_FLIGHT),  # 2*128/4 = 64, the cap
        (256, 4, 1000, MAX_AUTO_IN_FLIGHT),  # 128 wanted, capped
        (8, 256, 100, 2),  # one shard holds 32x the batch: still 2, so tails overlap
        (8, 4, 3, 3),  # no more than the shards left
        (8, 4, 1, 1),
        (8, 4, 0, 1),
    ],
)
def test_auto_in_flight_from_capacity_and_shard_rows(capacity, shard_rows, pending, expected):
    assert auto_in_flight(capacity, shard_rows, pending) == expected


@pytest.mark.parametrize(
    ("capacity", "shard_rows", "pending", "expected"),
    [
        (16, 4, 100, 16),  # 4*16/4: 64 rows held for 16 running (a continuously batched engine)
        (32, 8, 12, 12),  # 4*32/8 = 16 wanted, 12 shards left
        (128, 256, 100, 2),  # 512/256
        (128, 4, 1000, MAX_AUTO_IN_FLIGHT),
    ],
)
def test_auto_in_flight_deeper_for_continuous_batching(capacity, shard_rows, pending, expected):
    assert auto_in_flight(capacity, shard_rows, pending, depth=4) == expected
    assert EngineConfig(backend="vllm").queue_depth() == 4 and EngineConfig(backend="hf").queue_depth() == 2


def test_resolve_in_flight_explicit_wins_and_unsafe_stages_stay_at_one():
    assert resolve_in_flight(None, "auto", 8, 4, 100) == (4, "engine runs 8 at once, shards of 4 rows")
    assert resolve_in_flight("auto", "auto", 16, 2, 100)[0] == 16
    assert resolve_in_flight(3, "auto", 8, 4, 100) == (3, "pool.shards_in_flight")
    assert resolve_in_flight(None, 2, 8, 4, 100) == (2, "the stage's default")
    assert resolve_in_flight("auto", "auto", None, 4, 100)[0] == 1  # capacity unknown
    n, why = resolve_in_flight(5, None, 8, 4, 100)  # the stage's processor is not thread-safe
    assert n == 1 and "ignored" in why
    assert resolve_in_flight(None, None, 8, 4, 100) == (1, "this stage runs one shard at a time per actor")


def test_engine_capacity_in_prompt_rows():
    assert EngineConfig(backend="vllm").capacity() == 128  # vLLM's scheduler default
    assert EngineConfig(backend="vllm", vllm_kwargs={"max_num_seqs": 8}).capacity() == 8
    assert EngineConfig(backend="vllm", vllm_kwargs={"max_num_seqs": 8}).capacity(n=2) == 4  # 2 seqs a row
    assert EngineConfig(backend="vllm", vllm_kwargs={"max_num_seqs": 3}).capacity(n=4) == 1
    assert EngineConfig(backend="hf", batch_size=6).capacity(n=2) == 6  # rows per generate call


def test_pool_accepts_auto_and_keeps_it_out_of_the_hash():
    base = {"inputs": ["x.jsonl"], "output": "out"}
    auto = SampleConfig.model_validate({**base, "pool": {"shards_in_flight": "auto"}})
    four = SampleConfig.model_validate({**base, "pool": {"shards_in_flight": 4}})
    unset = SampleConfig.model_validate(base)
    assert auto.pool.shards_in_flight == "auto" and unset.pool.shards_in_flight is None
    assert auto.hash() == four.hash() == unset.hash()
    for bad in (0, "many", -1):
        with pytest.raises(ValueError, match="shards_in_flight"):
            PoolConfig.model_validate({"shards_in_flight": bad})
