"""Each supported row format prepares into the same rows as the equivalent native file.

Fixtures (tests/data/fixtures/<kind>_<format>.jsonl) hold the same examples as
<kind>_native.jsonl plus a few rows that do not fit their format, quarantined with its reasons.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rayalign.data.formats import detect_row
from rayalign.data.prepare import PrepareConfig, run_prepare

FIXTURES = Path(__file__).parent / "fixtures"

EXPECTED = {
    ("chat", "sharegpt"): {"sharegpt_unknown_speaker": 1, "sharegpt_bad_turn": 1},
    ("chat", "alpaca"): {"alpaca_missing_instruction": 1, "alpaca_missing_output": 1},
    ("chat", "trl"): {"trl_undesirable_completion": 1, "trl_missing_prompt": 1},
    ("chat", "openai"): {"non_text_content": 2},
    ("pairs", "trl"): {"trl_unpaired_preference": 1, "trl_missing_prompt": 1},
    ("pairs", "openai"): {"openai_bad_input": 1},
    ("pairs", "sharegpt"): {"sharegpt_bad_turn": 1},
    ("pairs", "alpaca"): {"alpaca_missing_instruction": 1},
}


def prepared(tmp_path: Path, kind: str, src: Path | str, fmt: str = "auto") -> tuple[dict, object]:
    out = tmp_path / f"{kind}-{Path(src).stem}-{fmt}"
    result = run_prepare(
        PrepareConfig(
            kind=kind,
            inputs=[str(src)],
            output=str(out),
            format=fmt,
            model="tiny-random:llama",
            pack=False,
            pool={"workers": 0},
        ),
        log=lambda s: None,
    )
    rows = pq.read_table(out / "data").to_pylist()
    key = (lambda r: r["doc_ids"][0]) if kind == "chat" else (lambda r: r["id"])
    return {key(r): r for r in rows}, result


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("native")
    return {kind: prepared(tmp, kind, FIXTURES / f"{kind}_native.jsonl")[0] for kind in ("chat", "pairs")}


@pytest.mark.parametrize("kind,fmt,override", [(k, f, o) for k, f in sorted(EXPECTED) for o in (False, True)])
def test_format_matches_native(kind, fmt, override, tmp_path, native):
    native = native[kind]
    rows, result = prepared(tmp_path, kind, FIXTURES / f"{kind}_{fmt}.jsonl", fmt if override else "auto")
    assert rows and rows == {k: native[k] for k in rows}  # the same tokens, labels and ids
    assert result.counts.by_reason == EXPECTED[(kind, fmt)]
    assert result.counts.in_ == result.counts.ok + result.counts.quarantined == len(rows) + result.counts.quarantined


def test_auto_detection_per_row():
    assert detect_row({"conversations": []}) == "sharegpt"
    assert detect_row({"instruction": "x", "output": "y"}) == "alpaca"
    assert detect_row({"prompt": "x", "completion": "y"}) == "trl"
    assert detect_row({"chosen": [], "rejected": []}) == "trl"
    assert detect_row({"input": {}, "preferred_output": []}) == "openai"
    assert detect_row({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]}) == "openai"
    assert detect_row({"messages": []}) == "native" and detect_row({"text": "x"}) == "native"


def test_override_quarantines_rows_of_another_format(tmp_path):
    _, result = prepared(tmp_path, "chat", FIXTURES / "chat_native.jsonl", "alpaca")
    assert result.counts.ok == 0 and result.counts.by_reason == {"alpaca_missing_instruction": 3}


def test_save_to_disk_folder_matches_native(tmp_path, native):
    datasets = pytest.importorskip("datasets")  # only to write the fixture; reading needs pyarrow alone
    import json

    rows = [json.loads(line) for line in (FIXTURES / "chat_native.jsonl").read_text().splitlines()]
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    saved, result = prepared(tmp_path, "chat", folder)
    assert saved == native["chat"] and result.counts.quarantined == 0


@pytest.mark.parametrize("fmt", ["sharegpt", "alpaca", "trl", "openai"])
def test_chat_formats_as_prompts(fmt, tmp_path):
    """A chat row of any format read as `prompts` is its conversation up to the last user turn."""
    native, _ = prepared(tmp_path, "prompts", FIXTURES / "prompts_native.jsonl")
    rows, _ = prepared(tmp_path, "prompts", FIXTURES / f"chat_{fmt}.jsonl", fmt)
    common = sorted(set(rows) & set(native))
    assert common == (["c1", "c2"] if fmt == "alpaca" else ["c1", "c2", "c3"])
    assert [rows[k] for k in common] == [native[k] for k in common]
