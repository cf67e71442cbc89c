"""Stop strings in rollouts: the sampled tokens end with the one that completed the stop string (as
vLLM's), the text the reward sees ends before it, and GRPO trains on exactly those tokens."""

from __future__ import annotations

import pytest
from grpo_helpers import TINY, grpo_config, write_prompts

from rayalign.generate.engine import EngineConfig, GenRequest, SamplingParams, make_engine
from rayalign.rl.config import GRPOConfig
from rayalign.rl.grpo import prepared_prompts
from rayalign.rl.trainer import GRPOTrainer

pytestmark = pytest.mark.timeout(120)
MESSAGES = [{"role": "user", "content": "Tell me about rivers."}]


def sample(engine, stop: list[str]):
    params = SamplingParams(temperature=1.0, max_tokens=16, n=4, seed=5, stop=stop)
    [res] = engine.generate([GenRequest(messages=MESSAGES, params=params, logprobs=0)])
    assert res.ok and res.logprobs is not None
    return res, [[t.token_id for t in c] for c in res.logprobs]


def test_stop_string_cuts_tokens_at_the_completing_one():
    """4 samples in one batch: a sample that meets the stop string early ends there, while the batch
    goes on for the others (the tokens generated for it after that are not its completion)."""
    engine = make_engine(EngineConfig(model=TINY))
    try:
        full, ids = sample(engine, [])
        text = full.texts[0]
        assert [len(x) for x in ids] == [16] * 4
        stop = text[4:6]  # a stop string sample 0 is known to contain, early
        res, got = sample(engine, [stop])
        decode = engine.tok.decode
        for i in range(4):
            n = len(got[i])
            # the same sample (same seed), ended at the shortest prefix whose text holds the stop string
            assert got[i] == ids[i][:n] and res.completion_tokens[i] == n, i
            if stop in full.texts[i]:
                assert res.texts[i] == full.texts[i][: full.texts[i].find(stop)] and res.finish_reasons[i] == "stop"
                assert stop in decode(got[i], skip_special_tokens=True)
                assert stop not in decode(got[i][:-1], skip_special_tokens=True)
            else:
                assert n == 16 and res.texts[i] == full.texts[i]
        assert min(len(x) for x in got) < max(len(x) for x in got)  # stopped at different lengths
    finally:
        engine.close()


def test_grpo_trains_on_the_stopped_tokens(tmp_path):
    data = grpo_config(
        tmp_path / "run",
        TINY,
        write_prompts(tmp_path / "p.jsonl"),
        rollout={"temperature": 1.0, "max_tokens": 16, "stop": ["e"]},
        rewards=[{"name": "length", "params": {"target": 4, "unit": "chars"}}],
    )
    cfg = GRPOConfig.model_validate(data)
    trainer = GRPOTrainer(cfg.train_config(prepared_prompts(cfg, log=lambda *_: None)), None, cfg)
    try:
        _, requests = trainer.requests(0)
        versions, results = trainer.engines.collect(trainer.engines.submit(requests, [0, 1], 0))
        rows = trainer.score(0, versions, results)
        texts = [t for r in results for t in r.texts]
        decode = trainer.tokenizer.decode
        stopped = 0
        for row, text in zip(rows, texts, strict=True):
            whole = decode(row["response_ids"], skip_special_tokens=True)
            assert "e" not in text and whole.startswith(text)
            assert len(row["behav_logps"]) == len(row["response_ids"])
            if len(row["response_ids"]) < 16 and "e" in whole:
                stopped += 1
                assert "e" not in decode(row["response_ids"][:-1], skip_special_tokens=True)
        assert stopped >= 2  # the stop string really ended some of the 8 samples
        trainer.train_step(0)  # and they train
    finally:
        trainer.engines.close()
