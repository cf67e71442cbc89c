"""`rayalign clair CONFIG.yaml`: contrastive revisions (D'Oosterlinck et al. 2024) → preference pairs.

    rayalign clair rayjobs/configs/clair.yaml inputs=[runs/sample/data] output=runs/clair

A reviser minimally revises each sampled response (templates/clair_revise.txt: copy what needs no
change, never mention the revision); the pair is chosen = revision, rejected = original, with
contrastiveness stats (token Jaccard, normalised token edit distance). Revisers (`reviser`):

- ``llm``: a model through the Engine (`reviser_engine`, by default the stage's engine);
- ``verifier``: for prompts whose meta holds checkable ``constraints`` (generate/verify.py) the LLM
  revision is kept only if it passes the check; otherwise (`rule_fallback`) the rule-based minimal
  fix is tried. Prompts without constraints get the plain LLM revision;
- ``rule``: the rule-based minimal fix only, no model — for the embedded default, where no model
  stronger than the policy exists.

Every revision is then measured against its original (`quality_checks`, generate/acceptable.py):
one that loops a phrase, stuffs keywords, wraps the whole answer in a JSON string or shows a format
the prompt did not ask for (quotes, JSON, P.S., title) is quarantined with that reason (repetitive /
keyword_stuffing / json_wrapper / unasked_format), not paired.

With `format_contrast` every plain answer — an accepted revision, or an original that already
passes its checks — also gives a format-contrast pair (generate/contrast.py): chosen = the answer,
rejected = the same answer with one format the prompt did not ask for added, status
``format_contrast``, id ``<sample id>-fmt``. Minimal revisions alone teach a format's first token
everywhere (a quotation fix differs from its original only in the quotes); these pairs make it
conditional on being asked. With `open_contrasts` (true, or a list of formats) both sides of a
format-contrast pair are marked open (``chosen_open`` / ``rejected_open``) and tokenised without the
end-of-turn: a P.S. or a closing quote is added after the plain answer, so a closed pair also prefers
ending right there to going on, for every prompt; open, the pair differs only in the format.

With `length_contrast` every plain answer to a prompt that sets no length limit also gives a
length-contrast pair (status ``length_contrast``, id ``<sample id>-len``): chosen = the answer,
rejected = the same answer cut after its first sentences, the way a `max_words` / `max_sentences`
fix cuts. Length fixes alone teach "stop early" everywhere; these pairs make brevity conditional on
being asked for.

`data/` holds only usable pairs in the `pairs` schema (id, prompt, chosen, rejected, meta) plus
reviser, status, jaccard, edit_distance, raw, sample_id, reviser_model, prompt_version, so the
`reference`/`prefer` stages read it directly. Every other row — identical pair, unparseable or
failing revision, engine error, bad input — goes to quarantine/ with its status as the reason and
the raw reply; the manifest counts each, and in = pairs + quarantined.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
from pydantic import Field

from rayalign.data.schemas import SCHEMAS, validate_row
from rayalign.data.shards import ProcessResult
from rayalign.generate import verify
from rayalign.generate.acceptable import revision_problem
from rayalign.generate.common import (
    GenStageConfig,
    chat_requests,
    count_status,
    dumps,
    engine_for,
    first_text,
    quarantine,
    run_gen_stage,
)
from rayalign.generate.contrast import (
    FormatName,
    contrast_stats,
    format_contrast,
    length_contrast,
    same_ending,
    unasked_formats,
)
from rayalign.generate.engine import EngineConfig, SamplingParams
from rayalign.generate.prompts import parse_revision, prompt_text, template_version, user_turn
from rayalign.results import Manifest, StageResult

CLAIR_SCHEMA = pa.schema(
    [
        *list(SCHEMAS["pairs"]),
        ("reviser", pa.string()),
        ("status", pa.string()),
        ("jaccard", pa.float64()),
        ("edit_distance", pa.float64()),
        ("raw", pa.string()),
        ("sample_id", pa.string()),
        ("reviser_model", pa.string()),
        ("prompt_version", pa.string()),
        ("chosen_open", pa.bool_()),
        ("rejected_open", pa.bool_()),
    ]
)
PAIR_STATUSES = ("revised", "verified", "rule_fixed")
CONTRAST_STATUS = "format_contrast"
LENGTH_STATUS = "length_contrast"


class ClairConfig(GenStageConfig):
    # llm: the model revises; verifier: LLM revision checked by the rules; rule: rule fixes only
    reviser: Literal["llm", "verifier", "rule"] = "llm"
    reviser_engine: EngineConfig | None = None  # None: the stage's engine (`engine` / `model`)
    params: SamplingParams = SamplingParams(max_tokens=512)  # sampling of the revisions
    rule_fallback: bool = True  # verifier: try the rule fix when the LLM revision fails the check
    revise_statuses: list[str] = Field(
        default_factory=lambda: ["ok", "truncated"]
    )  # sample statuses worth revising (a cut-off answer is a fine "rejected")
    # quarantine revisions no person would accept (generate/acceptable.py: repetitive, keyword
    # stuffing, a JSON wrapper around the answer; or a format the prompt did not ask for) with that
    # reason instead of pairing them
    quality_checks: bool = True
    # also pair every plain answer (accepted revision, or original that passes) against the same
    # answer with a format the prompt did not ask for (quotes, JSON, P.S., title) added
    format_contrast: bool = False
    # also pair every plain answer to a prompt that sets no length limit against the same answer cut
    # after its first sentences (as a max_words / max_sentences fix cuts): brevity only when asked
    length_contrast: bool = False
    # a sampled answer cut off at the sampling budget (status "truncated") did not end: a pair side
    # that ends where it was cut (its last words) is marked open (chosen_open / rejected_open) and
    # tokenised without the end-of-turn, so preference training does not teach the model to stop
    # there. Off: every side ends with the end-of-turn, as if the model had ended the answer
    open_cut_offs: bool = False
    # format-contrast pairs teach the format only, not where an answer ends: both sides are marked open
    # and tokenised without the end-of-turn (true: every format's pairs; a list: the pairs of those
    # formats only, e.g. [postscript]). Closed, a P.S. or closing-quote contrast prefers ending right
    # after the plain answer to going on, a preference for stopping that reaches every prompt
    open_contrasts: bool | list[FormatName] = False


def read_input(row: dict, revise_statuses: list[str]) -> tuple[dict | None, str, str]:
    """A sample row (or any row with prompt/messages + response) → (normalised row, status, detail)."""
    status = row.get("status") or "ok"
    if status not in revise_statuses:
        return (
            None,
            f"input_{status}",
            f"the sampled response has status {status!r}; revise_statuses is {revise_statuses}",
        )
    norm, reason = validate_row("prompts", {k: row.get(k) for k in ("id", "messages", "prompt", "meta") if k in row})
    if norm is None or reason is not None:
        return None, f"input_{reason.code if reason else 'invalid'}", reason.detail if reason else ""
    resp = row.get("response")
    if not isinstance(resp, str) or not resp.strip():
        return None, "input_no_response", "field 'response' is missing or empty"
    norm["response"] = resp
    norm["cut_off"] = status == "truncated"
    return norm, "ok", ""


def decide(original: str, revision: str | None, parse_status: str, finish: str) -> tuple[str | None, str]:
    """Status of an LLM revision before any verification: (chosen or None, status)."""
    if finish == "error":
        return None, "engine_error"
    if finish == "length":
        return None, "truncated"
    if revision is None:
        return None, parse_status  # "empty"
    if " ".join(revision.split()) == " ".join(original.split()):
        return None, "identical"
    return revision, "revised"


class ClairProcessor:
    output_schema = CLAIR_SCHEMA

    def __init__(self, cfg: ClairConfig):
        self.cfg = cfg
        self.rcfg = cfg.reviser_engine or cfg.policy_engine()
        self.engine = engine_for(self.rcfg) if cfg.reviser != "rule" else None
        self.version = template_version("clair_revise") if cfg.reviser != "rule" else "rule"
        self.reviser_model = self.rcfg.model if cfg.reviser != "rule" else "rule"

    def _llm(self, rows: list[dict]) -> list[tuple[str | None, str, str]]:
        """(revision or None, status, raw) per row."""
        if not rows:
            return []
        reqs = chat_requests(
            [user_turn("clair_revise", prompt=prompt_text(r["messages"]), response=r["response"]) for r in rows],
            self.cfg.params.model_copy(update={"n": 1}),
        )
        assert self.engine is not None, "the rule reviser has no engine"  # _llm runs for llm/verifier only
        out = []
        for r, res in zip(rows, self.engine.generate(reqs)):
            raw, finish = first_text(res)
            rev, st = parse_revision(raw) if finish != "error" else (None, "engine_error")
            chosen, status = decide(r["response"], rev, st, finish)
            out.append((chosen, status, raw if res.ok else (res.error or "")))
        return out

    def _revise(self, rows: list[dict]) -> list[tuple[str | None, str, str]]:
        mode = self.cfg.reviser
        if mode == "llm":
            return self._llm(rows)
        results: list[tuple[str | None, str, str] | None] = [None] * len(rows)
        to_llm = []
        for i, r in enumerate(rows):
            if not verify.checkable(r["meta"]):
                if mode == "rule":
                    results[i] = (None, "not_checkable", "")
                else:
                    to_llm.append(i)
            elif verify.check(r["meta"], r["response"]):
                results[i] = (None, "original_passes", "")  # nothing to fix: no contrast to learn from
            elif mode == "rule":
                fixed = verify.rule_fix(r["meta"], r["response"])
                results[i] = (fixed, "rule_fixed", "") if fixed is not None else (None, "unfixable", "")
            else:
                to_llm.append(i)
        for i, (chosen, status, raw) in zip(to_llm, self._llm([rows[i] for i in to_llm])):
            r = rows[i]
            if not verify.checkable(r["meta"]):
                results[i] = (chosen, status, raw)
            elif chosen is not None and verify.check(r["meta"], chosen):
                results[i] = (chosen, "verified", raw)
            else:
                fixed = verify.rule_fix(r["meta"], r["response"]) if self.cfg.rule_fallback else None
                why = "revision_fails_check" if chosen is not None else status
                results[i] = (fixed, "rule_fixed", raw) if fixed is not None else (None, why, raw)
        return results  # type: ignore[return-value]

    def _problem(self, row: dict, chosen: str | None) -> tuple[str, str] | None:
        if not self.cfg.quality_checks or chosen is None:
            return None
        cons = verify.constraints_of(row["meta"])
        leaks = unasked_formats(chosen, {c["kind"] for c in cons})
        if leaks:
            return "unasked_format", f"the chosen answer shows a format the prompt did not ask for: {leaks[0]}"
        return revision_problem(row["response"], chosen, cons)

    def _contrasts(self, row: dict, plain: str) -> list[dict]:
        """The contrast pairs of a plain answer: a format-contrast pair (when on, and a format is left
        to add) and a length-contrast pair (when on, and the prompt sets no length limit)."""
        asked = {c["kind"] for c in verify.constraints_of(row["meta"])}
        out = []
        made = format_contrast(plain, asked, row["id"]) if self.cfg.format_contrast else None
        if made is not None:
            out.append(
                self._pair(
                    row,
                    plain,
                    made[1],
                    CONTRAST_STATUS,
                    f"format: {made[0]}",
                    f"{row['id']}-fmt",
                    opened=self._opens(made[0]),
                )
            )
        cut = length_contrast(plain, asked) if self.cfg.length_contrast else None
        if cut is not None:
            out.append(
                self._pair(row, plain, cut, LENGTH_STATUS, "length: cut after its first sentences", f"{row['id']}-len")
            )
        return out

    def _opens(self, fmt: str) -> bool:
        """Whether the format-contrast pairs of format `fmt` are opened (`open_contrasts`)."""
        chosen = self.cfg.open_contrasts
        return chosen if isinstance(chosen, bool) else fmt in chosen

    def _add_contrasts(self, out: list[dict], stats: dict, pairs: list[dict]) -> None:
        for pair in pairs:
            key = "contrast_pairs" if pair["status"] == CONTRAST_STATUS else "length_contrast_pairs"
            stats[key] = stats.get(key, 0) + 1
        out.extend(pairs)

    def _pair(
        self, r: dict, chosen: str, rejected: str, status: str, raw: str, pair_id: str, opened: bool = False
    ) -> dict:
        """A pair row; `opened`: both sides open whatever their ending (see `_open` otherwise)."""
        return {
            "id": pair_id,
            "prompt": r["messages"],
            "chosen": chosen,
            "rejected": rejected,
            "meta": r["meta"],
            "reviser": self.cfg.reviser,
            "status": status,
            **contrast_stats(rejected, chosen),
            "raw": raw,
            "sample_id": r["id"],
            "reviser_model": self.reviser_model,
            "prompt_version": self.version,
            "chosen_open": opened or self._open(r, chosen),
            "rejected_open": opened or self._open(r, rejected),
        }

    def _open(self, r: dict, side: str) -> bool:
        """A side is open when its answer was cut off and it still ends where the cut was."""
        return self.cfg.open_cut_offs and r["cut_off"] and same_ending(side, r["response"])

    def process(self, rows: list[dict]) -> ProcessResult:
        good, quarantined, stats = [], [], {"jaccard_sum": 0.0, "edit_distance_sum": 0.0}
        for i, row in enumerate(rows):
            norm, status, detail = read_input(row, self.cfg.revise_statuses)
            if norm is None:
                count_status(stats, status)
                quarantined.append(quarantine("clair", row.get("_index", i), status, detail, row))
            else:
                norm["_index"] = row.get("_index", i)
                good.append(norm)
        out: list[dict] = []
        for r, (chosen, status, raw) in zip(good, self._revise(good)):
            if status == "original_passes" and (self.cfg.format_contrast or self.cfg.length_contrast):
                # the original is already a plain answer that passes: its contrast pairs, if acceptable
                passing = r["response"]
                pairs = self._contrasts(r, passing) if self._problem(r, passing) is None else []
                if pairs:
                    count_status(stats, pairs[0]["status"])  # the input row's status: its first pair's
                    self._add_contrasts(out, stats, pairs)
                    continue
            problem = self._problem(r, chosen) if status in PAIR_STATUSES else None
            if problem is not None:
                status = problem[0]
                raw = raw or f"{problem[1]}: {chosen}"
            count_status(stats, status)
            if chosen is None or status not in PAIR_STATUSES:
                quarantined.append(
                    quarantine(
                        "clair",
                        r["_index"],
                        status,
                        f"no pair: {problem[1] if problem else status}",
                        {
                            "id": r["id"],
                            "prompt": r["messages"],
                            "response": r["response"],
                            "revision": chosen,
                            "raw": raw,
                        },
                    )
                )
                continue
            pair = self._pair(r, chosen, r["response"], status, raw, r["id"])
            stats["jaccard_sum"] += pair["jaccard"]
            stats["edit_distance_sum"] += pair["edit_distance"]
            stats["revision_pairs"] = stats.get("revision_pairs", 0) + 1
            out.append(pair)
            self._add_contrasts(out, stats, self._contrasts(r, chosen))
        return ProcessResult(out, quarantined, stats)


def run_clair(cfg: ClairConfig, log=print) -> StageResult:
    def contrast(manifest: Manifest) -> dict:
        st = manifest.stats
        n = st.get("revision_pairs", manifest.counts.out_rows)  # the contrast stats are the revisions'
        if not n:
            return {}
        out = {"mean_jaccard": st["jaccard_sum"] / n, "mean_edit_distance": st["edit_distance_sum"] / n}
        if st.get("contrast_pairs"):
            out["format_contrast_pairs"] = int(st["contrast_pairs"])
        if st.get("length_contrast_pairs"):
            out["length_contrast_pairs"] = int(st["length_contrast_pairs"])
        log(f"    contrast: {dumps(out)}")
        return {"contrast": out}

    return run_gen_stage(
        "clair",
        cfg,
        lambda: ClairProcessor(cfg),
        kind=None,
        extra={"reviser": cfg.reviser},
        log=log,
        summarise=contrast,
    )
