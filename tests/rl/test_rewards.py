"""The rewards of online alignment (rl/rewards.py): values worked out by hand, the reward model against
the `score` stage on the same rows, and the judge's parsing through a real (tiny) HF engine."""

from __future__ import annotations

import json
import math

import pytest

from rayalign.config import ConfigError
from rayalign.rl.rewards import REWARDS, Rewards, RewardSpec, _fit, build_reward, parse_rating

TINY = "tiny-random:llama"


def row(prompt: str, constraints: list[dict] | None = None, as_json: bool = False) -> dict:
    meta: dict | str = {"constraints": constraints} if constraints is not None else {}
    return {
        "id": prompt[:8],
        "messages": [{"role": "user", "content": prompt}],
        "meta": json.dumps(meta) if as_json else meta,
    }


# two constraints; meta as a JSON string (how Arrow-backed rows carry it) and as a dict
LOWER_NO_COMMA = [{"kind": "lowercase"}, {"kind": "no_commas"}]
PROMPTS = [
    row("Describe rain. lowercase, no commas.", LOWER_NO_COMMA, as_json=True),
    row("Describe rain. lowercase, no commas.", LOWER_NO_COMMA),
    row("Describe rain. lowercase, no commas.", LOWER_NO_COMMA),
    row("Say hi."),  # no constraints
]
RESPONSES = ["rain falls from clouds", "rain falls, then dries", "Rain, then sun", "hi"]


def test_constraints_fraction_and_all_required():
    # 2/2 pass; lowercase ok + comma → 1/2; uppercase R + comma → 0/2; no constraints → 0
    fraction = build_reward(RewardSpec(name="constraints"))
    assert fraction(PROMPTS, RESPONSES) == [1.0, 0.5, 0.0, 0.0]
    strict = build_reward(RewardSpec(name="constraints", params={"all_required": True}))
    assert strict(PROMPTS, RESPONSES) == [1.0, 0.0, 0.0, 0.0]
    three = [row("x", [{"kind": "lowercase"}, {"kind": "no_commas"}, {"kind": "max_words", "max": 2}])]
    assert fraction(three, ["a, b c"]) == [pytest.approx(1 / 3)]  # lowercase only


def test_length_penalty_numbers():
    fn = build_reward(RewardSpec(name="length", params={"target": 4}))
    texts = ["one two", "one two three four", "1 2 3 4 5 6", "1 2 3 4 5 6 7 8 9 10 11 12"]
    # −max(0, n − 4) / 4: 2 → 0, 4 → 0, 6 → −0.5, 12 → −2
    assert fn([row("x")] * 4, texts) == [0.0, 0.0, -0.5, -2.0]
    chars = build_reward(RewardSpec(name="length", params={"target": 10, "unit": "chars"}))
    assert chars([row("x")] * 2, ["a" * 10, "a" * 15]) == [0.0, -0.5]


def test_repetition_penalty_marks_answers_that_loop_a_phrase():
    fn = build_reward(RewardSpec(name="repetition"))
    loop = "Here is my answer: " * 4  # "here is my answer" four times
    three = "Here is my answer. " * 3 + "Done."  # three times: not a loop
    mixed = "A b c d. a B c D! a b C d, and A b c d."  # case and punctuation do not hide it
    assert fn([row("x")] * 4, [loop, three, mixed, ""]) == [-1.0, 0.0, -1.0, 0.0]
    twice = build_reward(RewardSpec(name="repetition", params={"n": 2, "times": 2}))
    assert twice([row("x")] * 2, ["red fox red fox", "red fox blue fox"]) == [-1.0, 0.0]
    with pytest.raises(ConfigError, match="repetition needs"):
        build_reward(RewardSpec(name="repetition", params={"times": 1}))


def test_weights_combine_into_the_total():
    rewards = Rewards(
        [
            RewardSpec(name="constraints", weight=2.0),
            RewardSpec(name="length", weight=0.5, params={"target": 2}),
        ]
    )
    total, parts = rewards(PROMPTS, RESPONSES)
    # words: 4, 4, 3, 1 → length −1, −1, −0.5, 0; constraints 1, 0.5, 0, 0
    assert parts["constraints"] == [1.0, 0.5, 0.0, 0.0]
    assert parts["length"] == [-1.0, -1.0, -0.5, 0.0]
    assert total == pytest.approx([2 - 0.5, 1 - 0.5, -0.25, 0.0])
    assert rewards.stats() == {}  # neither keeps counts


@pytest.mark.parametrize(
    ("specs", "match"),
    [
        ([], "at least one reward"),
        ([{"name": "bleu"}], "unknown reward 'bleu'"),
        ([{"name": "length", "params": {"target": 8, "units": "words"}}], "length: bad params .*units"),
        ([{"name": "length", "params": {"unit": "tokens"}}], "length unit"),
        ([{"name": "constraints", "params": {"all": True}}], "constraints: bad params"),
        ([{"name": "reward_model", "params": {}}], "reward_model: bad params .*model"),
        ([{"name": "reward_model", "params": {"model": "x", "batch_size": 0}}], "reward_model needs batch_size"),
        ([{"name": "reward_model", "params": {"model": "x", "normalize": "z"}}], "reward_model normalize"),
        ([{"name": "judge", "params": {"engine": {"backend": "onnx"}}}], "judge engine"),
        ([{"name": "judge", "params": {"scale": 1}}], "judge needs"),
    ],
)
def test_bad_specs_are_config_errors_naming_the_reward(specs, match):
    with pytest.raises(ConfigError, match=match):
        Rewards([RewardSpec.model_validate(s) for s in specs])


def test_judge_template_without_placeholders_is_a_config_error(tmp_path):
    bad = tmp_path / "t.txt"
    bad.write_text("Rate this: $prompt")
    with pytest.raises(ConfigError, match=r"judge template .* lacks \$response"):
        build_reward(RewardSpec(name="judge", params={"template": str(bad)}))


@pytest.mark.parametrize(
    ("reply", "value"),
    [
        ("Rating: 10", 1.0),
        ("Rating: 1", 0.0),
        ("rating = 4/10", 3 / 9),
        ("**Score:** 7", 6 / 9),
        ("8", 7 / 9),
        ("  5/10. ", 4 / 9),
        ("Rating: 5.5", 4.5 / 9),
        ("Rating: 0", None),  # out of range
        ("Rating: 11", None),
        ("Rating: 3. On reflection, Rating: 9", None),  # two different ratings
        ("Rating: 6 (Rating: 6)", 5 / 9),  # the same one twice
        ("Rating: N", None),
        ("It is good, 9 out of ten", None),
        ("", None),
    ],
)
def test_parse_rating(reply, value):
    got = parse_rating(reply)
    assert got == (None if value is None else pytest.approx(value))


def test_parse_rating_other_scale():
    assert parse_rating("Rating: 3", scale=5) == pytest.approx(0.5)
    assert parse_rating("Rating: 7", scale=5) is None


@pytest.mark.timeout(300)
def test_judge_scores_parsed_replies_of_a_real_engine(tmp_path):
    """A tiny random model answers the rating prompt; the judge's scores are the parse of exactly the
    replies the same engine gives to the rendered prompts, unparseable ones 0 and counted (the
    mapping of parseable replies is worked out in test_parse_rating)."""
    from rayalign.generate.engine import EngineConfig, GenRequest, SamplingParams, make_engine

    engine = {"backend": "hf", "model": TINY, "max_model_len": 512, "batch_size": 4}
    rewards = Rewards([RewardSpec(name="judge", params={"engine": engine, "max_tokens": 6})])
    judge = rewards.fns[0]
    prompts, responses = PROMPTS[:3], RESPONSES[:3]
    scores, parts = rewards(prompts, responses)

    check = make_engine(EngineConfig.model_validate(engine))
    replies = check.generate(
        [
            GenRequest(
                messages=[{"role": "user", "content": judge.render(r, t)}],
                params=SamplingParams(temperature=0.0, max_tokens=6),
            )
            for r, t in zip(prompts, responses)
        ]
    )
    check.close()
    expected = [parse_rating(x.texts[0]) for x in replies]
    assert scores == parts["judge"] == [0.0 if v is None else v for v in expected]
    assert rewards.stats() == {
        "reward/judge/judged": 3.0,
        "reward/judge/unparseable": float(sum(v is None for v in expected)),
    }
    assert "Describe rain. lowercase, no commas." in judge.render(prompts[0], "rain falls")
    rewards.close()


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tiny_model_path) -> str:
    """The tiny Llama with a seeded, untrained one-output head: arbitrary but fixed rewards."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1)
    with torch.no_grad():
        model.score.weight.normal_(0.0, 1.0)
    out = tmp_path_factory.mktemp("rm")
    model.save_pretrained(out)
    from rayalign.models.loader import load_tokenizer

    load_tokenizer(TINY).save_pretrained(out)
    return str(out)


@pytest.mark.timeout(300)
def test_reward_model_equals_the_score_stage(reward_model_dir, tmp_path):
    """The same (prompt, response) rows through `rayalign score`'s processor and through the reward:
    equal scores (batched in a different order and size); `sigmoid` and `batch` normalise them."""
    from rayalign.prefer.score import ScoreConfig, ScoreProcessor

    texts = ["Ottawa.", "The capital of Canada is Ottawa, a city in Ontario.", "I don't know.", "Toronto?"]
    prompts = [row("What is the capital of Canada?"), row("Capital of Canada?"), row("Hi"), row("Where?")]
    score_rows = [
        {"id": f"r{i}", "messages": p["messages"], "response": t} for i, (p, t) in enumerate(zip(prompts, texts))
    ]
    cfg = ScoreConfig(inputs=["x"], output=str(tmp_path / "s"), model=reward_model_dir, batch_size=3)
    expected = [r["reward"] for r in ScoreProcessor(cfg).process(score_rows).rows]
    assert len(set(expected)) == 4  # the head tells them apart

    spec = {"model": reward_model_dir, "batch_size": 2}
    raw = build_reward(RewardSpec(name="reward_model", params=spec))
    assert raw(prompts, texts) == pytest.approx(expected, abs=1e-5)
    assert raw.counts == {"scored": 4, "truncated": 0}

    sig = build_reward(RewardSpec(name="reward_model", params={**spec, "normalize": "sigmoid"}))
    assert sig(prompts, texts) == pytest.approx([1 / (1 + math.exp(-r)) for r in expected], abs=1e-5)
    z = build_reward(RewardSpec(name="reward_model", params={**spec, "normalize": "batch"}))(prompts, texts)
    mean = sum(expected) / 4
    std = math.sqrt(sum((r - mean) ** 2 for r in expected) / 4)
    assert z == pytest.approx([(r - mean) / std for r in expected], abs=1e-4)


@pytest.mark.timeout(300)
def test_reward_model_cuts_over_long_rows_to_max_length(reward_model_dir):
    """An over-long response is scored on its first tokens (the chat template's system turn makes the
    prompt long too, so it keeps its tail): equal to the head's output on exactly those ids."""
    import torch

    from rayalign.data.tokenize import tokenize_pair
    from rayalign.models.loader import load_tokenizer
    from rayalign.objectives.accuracy import load_reward_model
    from rayalign.objectives.pairs import collate_sequences, sequence_rewards

    long_text = " ".join(["word"] * 200)
    fn = build_reward(RewardSpec(name="reward_model", params={"model": reward_model_dir, "max_length": 64}))
    (score,) = fn([row("Say many words.")], [long_text])
    assert fn.counts["truncated"] == 1

    tok = load_tokenizer(reward_model_dir)
    ids = tokenize_pair(tok, row("Say many words.")["messages"], long_text, long_text)
    p, y, cut = _fit(ids["prompt_ids"], ids["chosen_ids"], 64)  # _fit's cut: checked by hand below
    assert cut and len(p) + len(y) == 64 and y == ids["chosen_ids"][: len(y)] and len(y) >= 32
    with torch.inference_mode():
        batch = collate_sequences([p], [y], tok.pad_token_id)
        (expected,) = sequence_rewards(load_reward_model(reward_model_dir), batch).tolist()
    assert score == pytest.approx(expected, abs=1e-5)


def test_fit_keeps_half_for_the_response():
    p, y, cut = _fit(list(range(100)), list(range(100, 140)), 64)
    # the response keeps max(64 − 100, 32) = 32 head tokens, the prompt its last 32
    assert cut and y == list(range(100, 132)) and p == list(range(68, 100))
    p, y, cut = _fit(list(range(10)), list(range(10, 100)), 64)  # the prompt fits: the response gets 54
    assert cut and p == list(range(10)) and y == list(range(10, 64))
    assert _fit([1, 2], [3], 8) == ([1, 2], [3], False)


def test_registry_lists_the_four_rewards():
    assert {"constraints", "length", "reward_model", "judge"} <= set(REWARDS)
