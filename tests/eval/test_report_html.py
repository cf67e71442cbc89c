"""report.html: a hand-made eval folder rendered, then opened in headless Chromium (Debian's
chromium + chromium-driver, driven by selenium): no console errors, the filters change the row
counts as worked out by hand, model output stays text, and the screenshot is not blank."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest

from rayalign.eval.report import write_report
from rayalign.eval.report_html import change_of, word_diff

HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'

# (id, constraints, baseline passes, aligned passes): outcome → improved 2, regressed 1, changed 1, same 2
PROMPTS = [
    ("p0", ["lowercase", "no_commas"], [False, True], [True, True]),  # improved
    ("p1", ["uppercase"], [False], [True]),  # improved
    ("p2", ["lowercase"], [True], [False]),  # regressed
    ("p3", ["include_keywords", "no_commas"], [True, False], [False, True]),  # changed (fails both)
    ("p4", ["no_commas"], [True], [True]),  # same
    ("p5", ["uppercase", "lowercase"], [False, False], [False, False]),  # same
]


def make_eval(tmp_path: Path, with_stats: bool = True) -> tuple[Path, dict]:
    out = tmp_path / "eval"
    out.mkdir()
    lines = []
    for pid, kinds, base, aligned in PROMPTS:
        cons = [{"kind": k} if k != "include_keywords" else {"kind": k, "keywords": ["a|b", "<c>"]} for k in kinds]
        answer = f"aligned answer to {pid}" + (f" {HOSTILE}" if pid == "p2" else "") if pid != "p5" else "\n\n  \n"
        lines.append(
            {
                "id": pid,
                "prompt": f"prompt {pid} <b>bold?</b>",
                "constraints": cons,
                "baseline": {"response": f"base answer to {pid}", "passed": base},
                "aligned": {"response": answer, "passed": aligned},
            }
        )
    (out / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    results = {
        "models": {"aligned": "runs/x/prefer/final", "baseline": "builtin:smollm2-135m-instruct"},
        "suite": "builtin",
        "prompts": 6,
        "baseline": {"ifeval": _ifeval(2)},
        "aligned": {"ifeval": _ifeval(3), "truncated": 2},
    }
    if with_stats:
        rate = {"mean": 0.5, "lo": 0.1667, "hi": 0.8333, "n": 6}
        results["stats"] = {
            "rates": {
                "baseline": {"prompt_level": {**rate, "mean": 0.3333}, "instruction_level": rate, "kinds": {}},
                "aligned": {
                    "prompt_level": rate,
                    "instruction_level": rate,
                    "kinds": {"uppercase": {"mean": 0.25, "lo": 0.0, "hi": 0.75, "n": 4}},
                },
            },
            "paired": {
                "aligned - baseline": {
                    "metric": "prompt_level",
                    "diff": 0.1667,
                    "lo": -0.1667,
                    "hi": 0.5,
                    "p_value": 0.62,
                    "n": 6,
                    "within_noise": True,
                }
            },
            "paired_kinds": {
                "aligned - baseline": {
                    "uppercase": {
                        "diff": 0.0,
                        "lo": -0.75,
                        "hi": -0.25,
                        "p_value": 0.01,
                        "n": 3,
                        "within_noise": False,
                    },
                    "lowercase": {"diff": 0.0, "lo": -0.5, "hi": 0.5, "p_value": 1.0, "n": 3, "within_noise": True},
                }
            },
            "suite": {"name": "builtin", "path": "builtin", "reads": 3},
        }
    return out, results


def _ifeval(n_pass: int) -> dict:
    return {
        "prompt_accuracy": n_pass / 6,
        "instruction_accuracy": 0.5,
        "by_kind": {"include_keywords": 0.0, "lowercase": 0.5, "no_commas": 1.0, "uppercase": 0.25},
        "kind_counts": {"include_keywords": 1, "lowercase": 3, "no_commas": 3, "uppercase": 3},
    }


def make_run(tmp_path: Path) -> Path:
    """A run folder: a training stage's metrics.jsonl and a clair stage's pairs dataset."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = tmp_path / "run"
    (run / "prefer").mkdir(parents=True)
    rows = [
        {"step": s, "loss": 0.7 - 0.01 * s, "rewards/margins": 0.02 * s, "tokens_per_s": 400.0} for s in range(1, 31)
    ]
    (run / "prefer" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "clair" / "data").mkdir(parents=True)
    prompt = [{"role": "user", "content": "Write in lowercase."}]
    table = pa.table(
        {
            "id": ["c0", "c1"],
            "prompt": [prompt, prompt],
            "chosen": ["the sky is blue today", "same"],
            "rejected": ["The sky is <blue> today", "same"],
        }
    )
    pq.write_table(table, run / "clair" / "data" / "shard-00000.parquet")
    summary = {
        "status": "complete",
        "stages": [
            {
                "id": "clair",
                "name": "clair",
                "stage": "clair",
                "status": "complete",
                "output": str(run / "clair"),
                "seconds": 12.5,
                "counts": {"in": 2.0, "ok": 2.0, "quarantined": 0.0, "out_rows": 2.0},
                "metrics": {},
            },
            {
                "id": "prefer",
                "name": "prefer",
                "stage": "prefer",
                "status": "complete",
                "seconds": 30.0,
                "metrics": {"final_loss": 0.4, "steps": 30.0},
            },
        ],
    }
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_page_content_without_a_browser(tmp_path):
    out, results = make_eval(tmp_path)
    run = make_run(tmp_path)
    write_report(out / "report", results, run_dir=str(run))
    page = (out / "report" / "report.html").read_text()
    # self-contained: nothing fetched from anywhere
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page
    # model output and prompts are text, never markup
    assert "<script>window.__pwned" not in page and "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page
    assert "<b>bold?</b>" not in page and "&lt;b&gt;bold?&lt;/b&gt;" in page
    # the headline with its intervals, the paired difference and the suite's reads
    assert "95% CI 16.7% – 83.3%, n=6" in page
    assert "+16.7 pts" in page and "p=0.62" in page and "within noise" in page
    assert "scored 3 time(s) on this machine" in page
    assert "2/6 aligned answers were cut at max_tokens" in page and "baseline answers were cut" not in page
    assert "(empty answer: 5 whitespace characters)" in page
    # the pair's word-level edit, and the pair with no edit left out
    assert "<del>The</del>" in page and "<ins>the</ins>" in page and "&lt;blue&gt;" in page
    assert ">c1<" not in page
    assert page.count('<svg class="chart"') == 3  # prefer: loss, margins, tokens/s
    assert "2 / 2 / 2" in page  # counts stored as floats print as integers
    # by kind: the change's paired interval on the cell, and a mark where it excludes 0
    kinds = page[page.index('<section id="kinds">') :]
    assert "the paired 95% interval of the change excludes 0" in kinds
    assert '<td class="num " title="paired 95% CI -75.0 – -25.0">+0.0*</td>' in kinds
    assert '<td class="num " title="paired 95% CI -50.0 – +50.0">+0.0</td>' in kinds


def leaks(quotes: int, loops: int, median: float) -> dict:
    """The eval stage's `leaks` for 6 prompts: 5 not asking for quotes, 4 asking for no format."""
    rate = lambda count, n: {"rate": count / n, "count": count, "n": n}  # noqa: E731
    return {
        "quotes": rate(quotes, 5),
        "json": rate(0, 6),
        "postscript": rate(0, 6),
        "title": rate(0, 6),
        "any": rate(min(quotes, 4), 4),
        "repetition": rate(loops, 6),
        "length": {"n": 3, "median": median, "mean": median, "short": rate(1, 3)},
    }


def test_side_effects_show_leaks_repetition_and_length_per_model(tmp_path):
    out, results = make_eval(tmp_path)
    results["baseline"]["leaks"] = leaks(quotes=0, loops=2, median=52.0)
    results["aligned"]["leaks"] = leaks(quotes=3, loops=1, median=13.0)
    write_report(out / "report", results)
    page = (out / "report" / "report.html").read_text()
    assert '<a href="#effects">Side effects</a>' in page
    section = page[page.index('<section id="effects">') : page.index('<section id="kinds">')]
    # quotes: 0/5 → 3/5, more is worse (red); repetition 2/6 → 1/6, fewer is better (green)
    assert "<td>starts with a quote</td><td class=num>5</td><td class=num>0.0% (0)</td>" in section
    assert '<td class=num>60.0% (3)</td><td class="num down">+3</td>' in section
    assert '<td class=num>33.3% (2)</td><td class=num>16.7% (1)</td><td class="num up">-1</td>' in section
    assert "<td class=num>52</td><td class=num>13</td><td class=num>-39</td>" in section
    assert '<td class=num>33.3% (1)</td><td class=num>33.3% (1)</td><td class="num ">+0</td>' in section
    # results written before the leak measures: no section, no link
    del results["aligned"]["leaks"]
    write_report(out / "report", results)
    page = (out / "report" / "report.html").read_text()
    assert 'id="effects"' not in page and 'href="#effects"' not in page


def test_without_stats_the_point_estimates_are_shown(tmp_path):
    out, results = make_eval(tmp_path, with_stats=False)
    write_report(out / "report", results)
    page = (out / "report" / "report.html").read_text()
    assert "95% CI" not in page and "50.0%" in page and "33.3%" in page
    assert 'id="pairs"' not in page and 'id="curves"' not in page


def test_outcome_and_word_diff():
    assert [change_of({"baseline": {"passed": b}, "aligned": {"passed": a}}) for _, _, b, a in PROMPTS] == [
        "improved",
        "improved",
        "regressed",
        "changed",
        "same",
        "same",
    ]
    assert word_diff("a b c", "a x c") == ("a <del>b</del> c", "a <ins>x</ins> c")
    assert word_diff("<i>", "<i> ok") == ("&lt;i&gt;", "&lt;i&gt;<ins> ok</ins>")


# --- in a real browser ---

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("chromium and chromium-driver are not installed: `apt-get install -y chromium chromium-driver`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.mark.timeout(120)
def test_in_headless_chromium(tmp_path, browser):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    out, results = make_eval(tmp_path)
    write_report(out / "report", results, run_dir=str(make_run(tmp_path)))
    browser.get((out / "report" / "report.html").as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    assert browser.execute_script("return window.__pwned === undefined")  # the answer's markup never ran

    def visible() -> list[str]:
        rows = browser.find_elements(By.CSS_SELECTOR, "#answers-table tr.row")
        return [
            r.get_attribute("data-change") + ":" + r.find_element(By.CSS_SELECTOR, ".pid").text.split()[0]
            for r in rows
            if r.is_displayed()
        ]

    shown = browser.find_element(By.ID, "shown")
    assert len(visible()) == 6 and shown.text == "6 of 6 prompts"
    kind, change = Select(browser.find_element(By.ID, "f-kind")), Select(browser.find_element(By.ID, "f-change"))
    kind.select_by_value("uppercase")
    assert sorted(visible()) == ["improved:p1", "same:p5"] and shown.text == "2 of 6 prompts"
    kind.select_by_value("")
    change.select_by_value("any")
    assert sorted(visible()) == ["changed:p3", "improved:p0", "improved:p1", "regressed:p2"]
    change.select_by_value("regressed")
    assert visible() == ["regressed:p2"]
    kind.select_by_value("no_commas")
    assert visible() == [] and shown.text == "0 of 6 prompts"
    change.select_by_value("")
    box = browser.find_element(By.ID, "f-text")
    box.send_keys("pwned")  # the hostile answer is searchable text
    assert visible() == []  # p2 has no no_commas check
    kind.select_by_value("")
    assert visible() == ["regressed:p2"]
    box.clear()
    browser.execute_script("document.getElementById('f-text').dispatchEvent(new Event('input'))")
    assert len(visible()) == 6
    # the hostile answer is shown as its text
    cell = browser.find_elements(By.CSS_SELECTOR, "#answers-table tr.row")[2].find_elements(By.CSS_SELECTOR, "td")[2]
    assert "<script>window.__pwned=1</script>" in cell.text

    browser.execute_script("window.scrollTo(0, 0)")
    png = browser.get_screenshot_as_png()
    (tmp_path / "report.png").write_bytes(png)
    img = Image.open(io.BytesIO(png)).convert("L")
    pixels = list(img.getdata())
    mean = sum(pixels) / len(pixels)
    variance = sum((p - mean) ** 2 for p in pixels) / len(pixels)
    assert img.size[0] >= 1000 and variance > 500, f"screenshot looks blank (variance {variance:.0f})"


def test_report_html_in_a_bucket(s3_bucket, tmp_path):
    """Eval folder and run folder on S3: the page reads responses.jsonl beside the report folder and
    the training curves of the run, and is uploaded next to report.md."""
    from rayalign import storage

    local, results = make_eval(tmp_path)
    out = f"{s3_bucket}/eval"
    storage.write_text(f"{out}/responses.jsonl", (local / "responses.jsonl").read_text())
    storage.write_text(f"{s3_bucket}/run/prefer/metrics.jsonl", '{"step": 1, "loss": 0.7}\n{"step": 2, "loss": 0.5}\n')
    assert write_report(f"{out}/report", results, run_dir=f"{s3_bucket}/run") == f"{out}/report/report.md"
    page = storage.read_text(f"{out}/report/report.html")
    assert page.count('<tr class="row') == 6 and "loss 0.7 → 0.5" in page
