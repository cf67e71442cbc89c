"""Shared tail of every benchmark: the results header, the markdown report and the command index.

Every file in benchmarks/results/ starts with a header written here:

    > command: `python benchmarks/bench_prefer.py --quick`
    > commit: `2f125ad0…` (clean)
    > load average (1/5/15 min): 0.30 0.31 0.14 at the start, 2.10 1.20 0.60 at the end; 2 CPUs
    > versions: python 3.11.7, torch 2.8.0+cpu, transformers 4.57.1, trl 0.24.0, …

so a reader can re-run the exact command at the exact commit and see how loaded the machine was.
`save_report` writes it and refreshes benchmarks/COMMANDS.md, the list of every results file and the
command that wrote it (`python benchmarks/report.py` regenerates that list from the headers alone).

Quick runs get a `-quick` suffix so they never overwrite the full run's dated report.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
INDEX = BENCH / "COMMANDS.md"
PACKAGES = ("rayalign", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "pyarrow", "ray", "vllm")
FIELDS = ("command", "commit", "load average", "versions")
_LINE = re.compile(r"^> (command|commit|load average|versions)\b[^:]*: (.*)$")
_COMMAND = re.compile(r"^`(python [^`]+)`")

# the load when the benchmark started: report is imported at the top of every script
_LOAD_AT_START = os.getloadavg()


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def commit_line() -> str:
    """HEAD, and the changed files under src/ and benchmarks/ when the tree differs from it."""
    sha = _git("rev-parse", "HEAD") or "unknown (not a git checkout)"
    # porcelain lines are "XY path"; `_git` strips the output, so the first line may have lost a space
    dirty = [line[2:].strip() for line in _git("status", "--porcelain", "--", "src", "benchmarks").splitlines()]
    dirty = [p for p in dirty if not p.startswith("benchmarks/results/") and p != "benchmarks/COMMANDS.md"]
    if not dirty:
        return f"`{sha}` (clean)"
    return f"`{sha}` + uncommitted changes to {', '.join(sorted(dirty))}"


def versions_line() -> str:
    found = [f"python {platform.python_version()}"]
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def command_line(argv: list[str] | None = None) -> str:
    """The command as run from the repository root: `python benchmarks/<script> <args>`."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve()
    try:
        shown = script.relative_to(ROOT).as_posix()
    except ValueError:
        shown = argv[0]
    return "python " + shlex.join([shown, *argv[1:]])


def _niceness() -> str:
    """Said when the benchmark ran at a raised priority (`nice -n -15 python …` on a shared machine): the
    other processes then get only the CPU it leaves, which the load average alone would not tell."""
    n = os.nice(0)
    return f"; ran at nice {n} (other processes at their own, usually 0)" if n else ""


def header(argv: list[str] | None = None, load_at_start: tuple[float, float, float] | None = None) -> list[str]:
    start = " ".join(f"{x:.2f}" for x in (load_at_start or _LOAD_AT_START))
    end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"> command: `{command_line(argv)}`",
        f"> commit: {commit_line()}",
        f"> load average (1/5/15 min): {start} at the start, {end} at the end; {os.cpu_count()} CPUs, "
        f"{platform.machine()}{_niceness()}",
        f"> versions: {versions_line()}",
        "",
    ]


def slug(text: str) -> str:
    """A file-name-safe form of a model spec (`tiny-random:llama` -> `tiny-random-llama`)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def save_report(
    lines: list[str], name: str, quick: bool = False, device: str = "cpu", folder: Path | None = None
) -> Path:
    """Header + report into <folder or results>/<date>-<name>-<device>[-quick].md; print; refresh the index."""
    report = "\n".join(header() + lines) + "\n"
    print(report)
    out = (folder or RESULTS) / f"{dt.date.today()}-{name}-{device}{'-quick' if quick else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"wrote {out}")
    if out.parent.resolve() == RESULTS.resolve():
        INDEX.write_text(index_text())
    return out


def read_header(path: Path) -> dict[str, str]:
    """The header fields of a results file (the `> field: value` lines before its first heading)."""
    fields: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            break
        m = _LINE.match(line)
        if m:
            fields[m.group(1)] = m.group(2).strip()
    return fields


def header_command(fields: dict[str, str]) -> list[str] | None:
    """The command of a header as argv (`benchmarks/<script>`, args...), or None when it names none."""
    m = _COMMAND.match(fields.get("command", ""))
    return shlex.split(m.group(1))[1:] if m else None


def results_files() -> list[Path]:
    return sorted(p for p in RESULTS.glob("*.md") if p.is_file())


def index_text() -> str:
    rows = [
        "# Benchmark results and the commands that wrote them",
        "",
        "Generated from the headers of `benchmarks/results/*.md` by `python benchmarks/report.py`",
        "(every benchmark refreshes it when it writes a report); a test checks it is current.",
        "",
        "| results file | command | commit |",
        "|---|---|---|",
    ]
    for path in results_files():
        fields = read_header(path)
        commit = fields.get("commit", "").split(" ")[0].strip("`")[:12]
        rows.append(f"| {path.name} | {fields.get('command', '(none)')} | {commit or '(none)'} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    INDEX.write_text(index_text())
    print(f"wrote {INDEX}")
