"""A full local disk: `prepare` writing to a small tmpfs stops with an error naming the file and the
bytes it needs, leaves no half-committed shard, and after the disk grows the re-run completes with
exactly the rows of a run that never ran out of space."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rayalign import storage
from rayalign.data.prepare import PrepareConfig, run_prepare
from rayalign.data.shards import MANIFEST, PROGRESS, read_dataset

REPO = Path(__file__).resolve().parents[2]
CHAT = REPO / "rayjobs" / "data" / "chat.jsonl"


def cfg(out: Path) -> PrepareConfig:
    return PrepareConfig(
        kind="chat",
        inputs=[str(CHAT)],
        output=str(out),
        model="tiny-random:llama",
        max_length=128,
        seq_len=128,
        pool={"workers": 0, "shard_rows": 24},
    )


def mount_tmpfs(folder: Path, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a small tmpfs is not permitted here ({done.stderr.strip()}); the test needs root")


def used_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


@pytest.mark.timeout(120)
def test_full_disk_stops_cleanly_and_the_rerun_completes(tmp_path):
    clean = run_prepare(cfg(tmp_path / "clean"), log=lambda s: None)
    total = used_bytes(tmp_path / "clean")

    disk = tmp_path / "disk"
    mount_tmpfs(disk, total // 2)
    try:
        out = disk / "prepared"
        with pytest.raises(storage.DiskFullError) as err:
            run_prepare(cfg(out), log=lambda s: None)
        text = str(err.value)
        m = re.match(
            rf"({re.escape(str(out))}/\S+\.(?:parquet|json)): no space left on device: the file needs (\d+) bytes", text
        )
        assert m, text
        assert "free at least" in text and "point the output elsewhere" in text
        assert not Path(m.group(1)).exists()

        # nothing half-committed: no temporary file, no manifest; every marker's shard is whole
        assert not [f for f in out.rglob("*") if f.name.endswith(".tmp")]
        assert not (out / MANIFEST).exists()
        markers = sorted((out / PROGRESS).glob("shard-*.json"))
        assert 0 < len(markers) < len(list((tmp_path / "clean" / PROGRESS).glob("shard-*.json")))
        for marker in markers:
            assert pq.read_table(out / "data" / f"{marker.stem}.parquet").num_rows > 0

        subprocess.run(["mount", "-o", f"remount,size={total * 4}", str(disk)], check=True)
        logs: list[str] = []
        again = run_prepare(cfg(out), log=logs.append)
        assert again.counts == clean.counts
        assert (again.counts.in_, again.counts.ok + again.counts.quarantined) == (230, 230)
        cols = ["input_ids", "labels"]
        assert (
            read_dataset(str(out), columns=cols).to_pylist()
            == read_dataset(str(tmp_path / "clean"), columns=cols).to_pylist()
        )
        assert f"{len(markers)} done, {12 - len(markers)} to run" in logs[0], logs[0]  # finished shards kept
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
