"""`rayalign inspect FILE`: detected format, counts by status, three examples as they will be trained."""

from __future__ import annotations

from pathlib import Path

from rayalign.data.inspect import main

FIXTURES = Path(__file__).parent / "fixtures"


def test_inspect_sharegpt_chat(capsys):
    assert main([str(FIXTURES / "chat_sharegpt.jsonl"), "--model", "tiny-random:llama"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "format: sharegpt   kind: chat"
    assert out[2] == "ok 3, quarantined 2"
    assert sorted(line.split() for line in out[3:5]) == [["1", "sharegpt_bad_turn"], ["1", "sharegpt_unknown_speaker"]]
    assert [line for line in out if line.startswith("--- example")] == [
        "--- example 1 (id c1) ---",
        "--- example 2 (id c2) ---",
        "--- example 3 (id c3) ---",
    ]
    text = "\n".join(out)
    # only the assistant turns (with their end-of-turn token) are trained
    assert "⟦Blue.<|im_end|>" in text and "⟦4.<|im_end|>" in text and "⟦6.<|im_end|>" in text
    assert text.count("⟦") == 4 and "⟦Name a colour." not in text


def test_inspect_pairs_with_format_override(capsys):
    assert (
        main(
            [
                str(FIXTURES / "pairs_alpaca.jsonl"),
                "--format",
                "alpaca",
                "--kind",
                "pairs",
                "--model",
                "tiny-random:llama",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "format: alpaca   kind: pairs" in out and "ok 2, quarantined 1" in out
    assert "chosen:   ⟦Blue.⟧" in out and "rejected: ⟦Dog.⟧" in out


def test_inspect_missing_file(capsys, tmp_path):
    assert main([str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "nope.jsonl" in err and "does not exist" in err
