"""After a GRPO update, the rollout engine's greedy output is the trainer's model's greedy output: in
the training process (state dict loaded in place) and in a Ray actor (through the object store)."""

from __future__ import annotations

import pytest
import torch
from grpo_helpers import TINY, grpo_config, write_prompts

from rayalign.generate.engine import GenRequest, SamplingParams
from rayalign.rl.config import GRPOConfig
from rayalign.rl.grpo import prepared_prompts
from rayalign.rl.rollout import RolloutEngines, engine_actor_class
from rayalign.rl.trainer import GRPOTrainer

MESSAGES = [{"role": "user", "content": "Tell me about rivers."}]


def greedy_engine(engines: RolloutEngines) -> tuple[list[int], list[float]]:
    """Greedy token ids and their log-probs from the engine."""
    req = GenRequest(messages=MESSAGES, params=SamplingParams(temperature=0.0, max_tokens=8), logprobs=0)
    [res] = engines.generate([req], [0])
    assert res.ok and res.logprobs is not None, res.error
    return [t.token_id for t in res.logprobs[0]], [t.logprob for t in res.logprobs[0]]


def greedy_engine_ids(engines: RolloutEngines) -> list[int]:
    return greedy_engine(engines)[0]


def model_logps(trainer: GRPOTrainer, response: list[int]) -> list[float]:
    """The trainer's model's log-probs of `response` after the rendered prompt."""
    prompt = trainer.render(MESSAGES)
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = trainer.model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(response).unsqueeze(1)).squeeze(1).tolist()


def greedy_model_ids(trainer: GRPOTrainer) -> list[int]:
    """The trainer's own model, greedy, on the prompt the engine renders (stop at EOS like the engine)."""
    ids = torch.tensor([trainer.render(MESSAGES)])
    with torch.no_grad():
        out = trainer.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=trainer.tokenizer.pad_token_id,
            eos_token_id=sorted(trainer.engines.local.eos_ids),
        )
    gen = out[0, ids.shape[1] :].tolist()
    eos = trainer.engines.local.eos_ids
    cut = next((i + 1 for i, t in enumerate(gen) if t in eos), len(gen))
    return gen[:cut]


@pytest.fixture(scope="module")
def updated(tmp_path_factory):
    """A GRPO trainer after two updates at a large learning rate. The reward is a length penalty
    (responses differ in length, so advantages are not all 0 as a constraint reward would be on a
    random model)."""
    tmp = tmp_path_factory.mktemp("sync")
    data = grpo_config(
        tmp / "run",
        TINY,
        write_prompts(tmp / "p.jsonl"),
        max_steps=2,
        optim={"lr": 5e-2, "min_lr_ratio": 1.0, "max_grad_norm": 0.0},
        aggregation="token",
        rewards=[{"name": "length", "params": {"target": 1, "unit": "chars"}}],
    )
    cfg = GRPOConfig.model_validate(data)
    train = cfg.train_config(prepared_prompts(cfg, log=lambda *_: None))
    trainer = GRPOTrainer(train, None, cfg)
    before = greedy_engine(trainer.engines)
    for step in range(2):
        trainer.train_step(step)
    yield trainer, before, cfg
    trainer.engines.close()


def test_in_process_engine_follows_the_trainer(updated):
    trainer, before, _ = updated
    after, logps = greedy_engine(trainer.engines)
    # the update moved the engine's model, so the equalities below mean something
    assert after != before[0] or max(abs(a - b) for a, b in zip(logps, before[1])) > 1e-3
    assert after == greedy_model_ids(trainer)
    assert logps == pytest.approx(model_logps(trainer, after), abs=1e-4)


@pytest.mark.timeout(180)
def test_engine_actor_loads_weights_from_the_object_store(updated, ray_cluster):
    trainer, before, cfg = updated
    actor = engine_actor_class(0.5).remote(cfg.engine_config())
    try:
        remote = RolloutEngines(cfg.engine_config(), actors=[actor])
        assert greedy_engine(remote) == before  # a fresh actor holds the base model
        remote.sync(trainer.model, rank=0, distributed=False)
        ids, logps = greedy_engine(remote)
        assert ids == greedy_model_ids(trainer)
        assert logps == pytest.approx(model_logps(trainer, ids), abs=1e-4)
    finally:
        ray_cluster.kill(actor)
