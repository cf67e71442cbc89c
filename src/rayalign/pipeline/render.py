"""What a person sees while a pipeline runs, and the final summary (at most 100 columns).

On a terminal one live display is refreshed in place (rich Live): the stage list with statuses
and the running stage's progress. When stdout is not a terminal (CI, `ray job logs`, a pipe) the
same information comes as plain lines: one when a stage starts or ends, and a progress line when
the progress changed (shards, rows, steps or requests done; polled every `PLAIN_EVERY_S` seconds)
or `PLAIN_QUIET_S` seconds passed without one. `--progress json` writes the same events as one
JSON object per line (`{"event": "progress", "stage": ..., "done": ..., "total": ..., "eta_s": ...}`)
for CI and dashboards.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import IO, Any

from rayalign.pipeline.progress import Progress, baseline, fmt_seconds, read_progress
from rayalign.pipeline.spec import Step
from rayalign.results import summary_warnings as results_warnings
from rayalign.textfmt import number

WIDTH = 100
PLAIN_EVERY_S = 5.0  # how often the stage's files are polled
PLAIN_QUIET_S = 30.0  # a line at least this often while nothing changes
MODES = ("auto", "live", "plain", "json")
LIVE_EVERY_S = 1.0
MARK = {"pending": "·", "running": "▶", "complete": "✓", "skipped": "✓", "failed": "✗"}


def make_display(stream: IO[str] | None = None, live: bool | None = None, mode: str = "auto") -> Display:
    """A live display on a terminal, plain lines otherwise (`live` or `mode` live/plain forces
    either); `mode="json"`: one JSON object per event."""
    stream = stream or sys.stdout
    if mode == "json":
        return JsonDisplay(stream)
    if mode in ("live", "plain"):
        live = mode == "live"
    if live is None:
        live = bool(getattr(stream, "isatty", lambda: False)())
    return LiveDisplay(stream) if live else Display(stream)


class Display:
    """Plain lines; the base of the live display (same events, different drawing)."""

    interval = PLAIN_EVERY_S

    def __init__(self, stream: IO[str]):
        from rich.console import Console

        self.console = Console(file=stream, highlight=False, width=WIDTH, soft_wrap=True)
        self.status: dict[str, str] = {}
        self.plan: list[Step] = []
        self.current: tuple[Step, str, dict, float, int] | None = None
        self.progress: Progress | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last: tuple[Any, float] = (None, 0.0)  # (progress key, time) of the last progress line

    # --- events from the runner ---
    def start(self, run_dir: str, plan: list[Step]) -> None:
        self.plan = plan
        self.status = {s.id: "pending" for s in plan}
        self.print(f"pipeline {run_dir}: {len(plan)} stage(s)")
        self._thread = threading.Thread(target=self._poll, name="pipeline-progress", daemon=True)
        self._thread.start()

    def note(self, text: str, style: str = "") -> None:
        self.print(f"[{style}]{_escape(text)}[/{style}]" if style else _escape(text))

    def stage_started(self, i: int, step: Step, folder: str, config: dict) -> None:
        with self._lock:
            self.status[step.id] = "running"
            self.current = (step, folder, config, time.time(), baseline(folder))
            self.progress = None
        self.print(f"▶ [{i + 1}/{len(self.plan)}] {_escape(step.title)}: started")

    def stage_done(self, i: int, step: Step, entry: dict) -> None:
        with self._lock:
            self.current, self.progress = None, None
            self.status[step.id] = "skipped" if entry.get("skipped") else "complete"
        if not entry.get("skipped"):
            self.print(
                f"✓ [{i + 1}/{len(self.plan)}] {_escape(step.title)}: done in "
                f"{entry.get('seconds') or 0:.1f}s  {_escape(headline(entry))}"
            )
            for w in stage_warnings(entry):
                self.print(f"[yellow]  ! {_escape(w)}[/yellow]")

    def stage_failed(self, i: int, step: Step, error: str) -> None:
        with self._lock:
            self.current, self.progress = None, None
            self.status[step.id] = "failed"
        self.print(f"[red]✗ [{i + 1}/{len(self.plan)}] {_escape(step.title)}: failed: {_escape(error[:300])}[/red]")

    def finish(self, summary: dict) -> None:
        self.close()
        for line in summary_lines(summary):
            self.console.print(_escape(line), overflow="ignore", crop=False)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # --- drawing ---
    def print(self, markup: str) -> None:
        self.console.print(markup)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                cur = self.current
            if cur is None:
                continue
            step, folder, config, since, start_done = cur
            try:
                p = read_progress(folder, config, since, start_done)
            except Exception:  # progress is advisory: a half-written file must never stop a run
                continue
            with self._lock:
                if self.current is cur:
                    self.progress = p
            self.tick(step, p, time.time() - since)

    def due(self, p: Progress | None) -> bool:
        """A new line when the progress changed, or PLAIN_QUIET_S seconds after the last one."""
        key, now = (p.key() if p else None), time.time()
        last_key, last_t = self._last
        if key == last_key and now - last_t < PLAIN_QUIET_S:
            return False
        self._last = (key, now)
        return True

    def tick(self, step: Step, p: Progress | None, elapsed: float) -> None:
        if not self.due(p):
            return
        text = p.line() if p else "running"
        self.print(f"  {_escape(step.title)}: {_escape(text)} ({fmt_seconds(elapsed)} elapsed)")


class JsonDisplay(Display):
    """One JSON object per line for each event (machines: CI, dashboards); progress as `Display`
    prints it: when it changed or PLAIN_QUIET_S seconds passed."""

    def __init__(self, stream: IO[str]):
        super().__init__(stream)
        self.stream = stream

    def emit(self, event: str, **fields: Any) -> None:
        doc = {"event": event, "time": round(time.time(), 3), **fields}
        self.stream.write(json.dumps(doc, default=str) + "\n")
        self.stream.flush()

    def print(self, markup: str) -> None:
        """The base display's text lines have their JSON events instead."""

    def start(self, run_dir: str, plan: list[Step]) -> None:
        self.emit("start", run_dir=run_dir, stages=[s.id for s in plan])
        super().start(run_dir, plan)

    def note(self, text: str, style: str = "") -> None:
        self.emit("note", text=text)

    def stage_started(self, i: int, step: Step, folder: str, config: dict) -> None:
        super().stage_started(i, step, folder, config)
        self.emit("stage_started", stage=step.id, kind=step.spec.stage, index=i + 1, of=len(self.plan))

    def stage_done(self, i: int, step: Step, entry: dict) -> None:
        super().stage_done(i, step, entry)
        keys = ("status", "skipped", "seconds", "counts", "metrics", "output", "checkpoint")
        self.emit("stage_done", stage=step.id, **{k: entry.get(k) for k in keys})

    def stage_failed(self, i: int, step: Step, error: str) -> None:
        super().stage_failed(i, step, error)
        self.emit("stage_failed", stage=step.id, error=error)

    def tick(self, step: Step, p: Progress | None, elapsed: float) -> None:
        if self.due(p):
            self.emit("progress", stage=step.id, elapsed_s=round(elapsed, 1), **(p.to_json() if p else {}))

    def finish(self, summary: dict) -> None:
        self.close()
        self.emit(
            "summary",
            status=summary.get("status"),
            seconds=summary.get("seconds"),
            final_model=summary.get("final_model"),
            warnings=summary_warnings(summary),
        )


class LiveDisplay(Display):
    """The stage list and the running stage's progress, redrawn in place on a terminal."""

    interval = LIVE_EVERY_S

    def __init__(self, stream: IO[str]):
        super().__init__(stream)
        self.live: Any = None  # a rich Live between start() and close()

    def start(self, run_dir: str, plan: list[Step]) -> None:
        from rich.live import Live

        self.live = Live(
            console=self.console,
            auto_refresh=False,
            transient=True,
            get_renderable=self._render,
            redirect_stdout=False,
            redirect_stderr=False,
        )  # stage output goes to the log
        self.live.start()
        super().start(run_dir, plan)

    def print(self, markup: str) -> None:
        self.console.print(markup)  # printed above the live area
        if self.live is not None:
            self.live.refresh()

    def tick(self, step: Step, p: Progress | None, elapsed: float) -> None:
        if self.live is not None:
            self.live.refresh()

    def close(self) -> None:
        super().close()
        if self.live is not None:
            self.live.stop()
            self.live = None

    def _render(self) -> Any:
        from rich.text import Text

        lines = []
        with self._lock:
            for s in self.plan:
                st = self.status.get(s.id, "pending")
                line = f" {MARK[st]} {s.title:<40.40} {st}"
                if st == "running" and self.current is not None:
                    line += f"  {(self.progress.line() if self.progress else '')}"
                    line += f"  {fmt_seconds(time.time() - self.current[3])}"
                lines.append(line[:WIDTH])
        return Text("\n".join(lines))


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


# ---------------------------------------------------------------------------------------------
# the final summary: one line per stage, at most WIDTH columns


def _num(v: Any) -> str:
    return number(v)


def stage_warnings(entry: dict) -> list[str]:
    """What a stage asks the user to act on (`details["warnings"]` of its result)."""
    return [w for _, w in results_warnings({"stages": [entry]})]


def summary_warnings(summary: dict) -> list[str]:
    return [f"{sid}: {w}" for sid, w in results_warnings(summary)]


def headline(entry: dict) -> str:
    """The number that says how a stage went: rows, final loss, pass rate (details in summary.json)."""
    m = entry.get("metrics") or {}
    c = entry.get("counts")
    if "aligned/prompt_accuracy" in m:
        text = f"pass {m['aligned/prompt_accuracy']:.3f}"
        if "baseline/prompt_accuracy" in m:
            text += f" (base {m['baseline/prompt_accuracy']:.3f})"
        return text
    for key in ("final_loss", "loss", "train/loss"):
        if key in m:
            steps = f" after {int(m['steps'])} steps" if "steps" in m else ""
            return f"loss {_num(m[key])}{steps}"
    if c:
        return f"rows {c.get('in')} in / {c.get('ok')} ok / {c.get('out_rows')} out"
    if m:
        k = next(iter(m))
        return f"{k} {_num(m[k])}"
    return ""


def summary_lines(summary: dict) -> list[str]:
    stages = summary.get("stages") or []
    lines = [
        f"pipeline {summary.get('status')} in {fmt_seconds(summary.get('seconds') or 0)}: {summary.get('run_dir')}"[
            :WIDTH
        ]
    ]
    name_w = min(max([len(s.get("id") or s["name"]) for s in stages] + [5]), 28)
    for s in stages:
        status = "skipped" if s.get("skipped") else str(s.get("status"))
        line = (
            f"  {(s.get('id') or s['name']):<{name_w}.{name_w}} {s['stage']:<9.9} {status:<8} "
            f"{fmt_seconds(s.get('seconds') or 0):>6}  {headline(s)}"
        )
        lines.append(line[:WIDTH])
    warnings = summary_warnings(summary)
    if warnings:
        lines.append("warnings:")
        lines += [f"  ! {w}" for w in warnings]  # not cut: each says what to change
    if summary.get("final_model"):
        lines.append(f"final model: {summary['final_model']}")  # a path is not cut: it must stay usable
    if summary.get("final_model_withheld"):
        lines.append(f"final model withheld: {summary['final_model_withheld']}")
    return lines
