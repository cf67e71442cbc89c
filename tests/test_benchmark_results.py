"""Every file in benchmarks/results/ says which committed script wrote it, with which arguments.

Reads each results file's header (benchmarks/report.py writes it), fails on a file that names no
command or names a script that is not in benchmarks/, parses the command's arguments with that
script's own argparse, and checks benchmarks/COMMANDS.md equals the list regenerated from the headers.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import report  # noqa: E402  (benchmarks/report.py)

FILES = report.results_files()
REAL_PARSE_ARGS = argparse.ArgumentParser.parse_args


class _Parsed(Exception):
    pass


def parse_with_script(script: Path, args: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """Run the script's main() up to its parse_args, with `args`; stop there and return the namespace."""
    spec = importlib.util.spec_from_file_location(f"_bench_{script.stem}", script)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def parse_then_stop(self, _args=None, namespace=None):
        raise _Parsed(REAL_PARSE_ARGS(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    try:
        module.main()
    except _Parsed as parsed:
        return parsed.args[0]
    except SystemExit as e:
        pytest.fail(f"{script.name} rejects the arguments {args} (exit {e.code})")
    pytest.fail(f"{script.name}: main() returned without parsing its arguments")


def test_there_are_results():
    assert FILES, "benchmarks/results/ holds no reports"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_results_header_names_a_committed_script_and_parses(path: Path, monkeypatch: pytest.MonkeyPatch):
    fields = report.read_header(path)
    missing = [f for f in report.FIELDS if not fields.get(f)]
    assert not missing, f"{path.name}: header lacks {missing}; write it with benchmarks/report.py save_report"
    argv = report.header_command(fields)
    assert argv, f"{path.name}: header names no `python benchmarks/<script> ...` command: {fields['command']!r}"
    script = BENCH.parent / argv[0]
    assert script.parent == BENCH and script.is_file(), f"{path.name}: {argv[0]} is not a script in benchmarks/"
    assert "save_report(" in script.read_text(), f"{script.name} does not write its report through save_report"
    parse_with_script(script, argv[1:], monkeypatch)


def test_command_index_is_current():
    assert report.INDEX.read_text() == report.index_text(), "run `python benchmarks/report.py` to regenerate"


def test_header_round_trip_and_a_bad_command_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    lines = report.header(argv=[str(BENCH / "bench_train.py"), "--quick", "--samples", "8"])
    f = tmp_path / "r.md"
    f.write_text("\n".join([*lines, "# title", "> command: `python elsewhere.py`"]) + "\n")
    fields = report.read_header(f)
    assert set(fields) == set(report.FIELDS)
    assert report.header_command(fields) == ["benchmarks/bench_train.py", "--quick", "--samples", "8"]
    assert fields["commit"].startswith("`") and len(fields["commit"].split("`")[1]) == 40
    assert "torch " in fields["versions"] and "at the start" in fields["load average"]
    ns = parse_with_script(BENCH / "bench_train.py", ["--quick", "--samples", "8"], monkeypatch)
    assert ns.quick and ns.samples == 8
    with pytest.raises(pytest.fail.Exception, match="rejects"):
        parse_with_script(BENCH / "bench_train.py", ["--no-such-flag"], monkeypatch)
    f.write_text("# no header\n")
    assert report.header_command(report.read_header(f)) is None
