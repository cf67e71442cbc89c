"""storage.py against a real S3 API on 127.0.0.1 and the local disk: same calls, same results."""

from __future__ import annotations

import pytest

from rayalign import storage


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3_bucket") + "/root"


def test_json_roundtrip_listing_and_removal(root):
    storage.makedirs(root)
    assert storage.read_json(storage.join(root, "a.json")) is None
    storage.write_json(storage.join(root, "a.json"), {"x": 1})
    storage.write_text(storage.join(root, "sub", "b.txt"), "hello")
    assert storage.read_json(storage.join(root, "a.json")) == {"x": 1}
    assert storage.read_text(storage.join(root, "sub", "b.txt")) == "hello"
    assert [storage.basename(p) for p in storage.list_dir(root)] == ["a.json", "sub"]
    assert storage.glob(root, "*.json") == [storage.join(root, "a.json")]
    assert storage.is_dir(storage.join(root, "sub")) and storage.exists(storage.join(root, "a.json"))
    assert storage.file_size(storage.join(root, "sub", "b.txt")) == 5
    storage.remove_tree(root)
    assert not storage.exists(storage.join(root, "a.json"))
    assert storage.list_dir(root) == []


def test_failed_write_leaves_nothing(root):
    target = storage.join(root, "torn.json")
    with pytest.raises(RuntimeError), storage.open_output(target) as fh:
        fh.write(b'{"half": ')
        raise RuntimeError("killed mid-write")
    assert storage.read_json(target) is None


def test_local_copy_downloads_once_per_content(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYALIGN_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "model"
    (src / "nested").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "nested" / "w.bin").write_bytes(b"\x00\x01" * 1000)
    uri = s3_bucket + "/models/m1"
    storage.upload_dir(src, uri)
    first = storage.local_copy(uri)
    assert (first / "config.json").read_text() == '{"a": 1}'
    assert (first / "nested" / "w.bin").read_bytes() == b"\x00\x01" * 1000
    assert storage.local_copy(uri) == first  # cached: same folder
    storage.write_text(uri + "/config.json", '{"a": 22}')  # new size/mtime -> new key
    second = storage.local_copy(uri)
    assert second != first and (second / "config.json").read_text() == '{"a": 22}'
    assert storage.local_copy(str(src)) == src  # local paths pass through


def test_local_output_replaces_the_target_and_keeps_no_local_copy(root, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    target = storage.join(root, "model")
    storage.write_text(storage.join(target, "stale.txt"), "old")
    with storage.local_output(target) as folder:
        (folder / "sub").mkdir(parents=True, exist_ok=True)
        (folder / "sub" / "w.bin").write_bytes(b"\x07" * 10)
    assert storage.read_text(storage.join(target, "sub", "w.bin")) == "\x07" * 10
    assert storage.is_uri(root) != storage.exists(storage.join(target, "stale.txt"))  # a URI is replaced whole
    with pytest.raises(RuntimeError), storage.local_output(target) as folder:
        (folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("failed mid-write")
    assert not storage.exists(storage.join(target, "half.bin")) or not storage.is_uri(root)
    assert list((tmp_path / "tmp").iterdir()) == []  # no temporary folder left behind


def test_join_parent_basename():
    assert storage.join("s3://b/run", "x", "y.json") == "s3://b/run/x/y.json"
    assert storage.parent("s3://b/run/x") == "s3://b/run"
    assert storage.basename("s3://b/run/x/") == "x"
    assert storage.join("/tmp/a", "b") == "/tmp/a/b"
