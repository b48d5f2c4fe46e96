"""Issue #15's bar, through a real `mmrec serve` process (uvicorn, real sockets): API keys (write key from
$MMREC_API_KEY, read-only key from a file), the Host allow-list, no server file access outside
--image-root (one answer for every refused path), bounded requests, ids with '/', and erasure that leaves
no trace of the user in any file of the data dir, across a restart. Plus what is decided before a server
starts (the loopback rule, key checks) and checkpoints that cannot run code."""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from service_support import READ_KEY, WRITE_KEY, Server, catalog_items, mmrec_cli, png_bytes

WRITE = {"api-key": WRITE_KEY}
READ = {"Authorization": f"Bearer {READ_KEY}"}
ERASED_USER = "erase-me-7f3a9c"  # distinctive: no other bytes in the data dir can contain it by chance
CLI_ERASED_USER = "erase-me-too-b81d2e"


class Served:
    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.images = root / "images"
        self.key_file = root / "read-only.key"
        self.srv = self.start()

    def start(self) -> Server:
        return Server(self.data, "--read-only-api-key-file", str(self.key_file), "--image-root", str(self.images),
                      env={"MMREC_API_KEY": WRITE_KEY})

    def restart(self) -> None:
        self.srv.stop()
        self.srv = self.start()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("secure")
    (root / "images").mkdir()
    (root / "images" / "dot.png").write_bytes(png_bytes("dot"))
    (root / "outside.png").write_bytes(png_bytes("stripes"))
    (root / "images" / "escape.png").symlink_to(root / "outside.png")
    (root / "images" / "passwd").symlink_to("/etc/passwd")
    (root / "read-only.key").write_text(READ_KEY + "\n")
    served = Served(root)
    assert served.srv.client.post("/items", json={"items": catalog_items()}, headers=WRITE).status_code == 200
    yield served
    served.srv.stop()


def call(served: Served, method: str, path: str, headers: dict | None = None, **kwargs) -> httpx.Response:
    return served.srv.client.request(method, path, headers=headers, **kwargs)


WRITES = [
    ("POST", "/items", {"json": {"items": [{"item_id": "auth:1", "title": "scam text"}]}}),
    ("DELETE", "/items/banana:en", {}),
    ("POST", "/events", {"json": {"events": [{"user_id": "someone", "item_id": "banana:en"}]}}),
    ("POST", "/events", {"json": {"events": [{"user_id": "someone", "item_id": "banana:en", "kind": "click",
                                              "request_id": "0" * 32, "position": 1}]}}),
    ("DELETE", "/users/someone", {}),
]
READS = [
    ("POST", "/recommend", {"json": {"user_id": "someone"}}),
    ("POST", "/recommend", {"json": {"history": ["banana:en"]}}),
    ("GET", "/search", {"params": {"q": "banana"}}),
    ("GET", "/items/banana:en", {}),
    ("GET", "/items/banana:en/similar", {}),
    ("POST", "/search/image", {"files": {"file": ("dot.png", png_bytes("dot"), "image/png")}}),
    ("GET", "/metrics", {}),
    ("GET", "/metrics/online", {}),
]


@pytest.mark.parametrize("method,path,kwargs", WRITES + READS)
def test_no_key_or_a_wrong_key_is_401(served, method, path, kwargs):
    for headers in (None, {"api-key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": WRITE_KEY}):
        response = call(served, method, path, headers, **kwargs)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["detail"] and "wrong" not in response.text


@pytest.mark.parametrize("method,path,kwargs", WRITES)
def test_the_read_only_key_cannot_write(served, method, path, kwargs):
    before = call(served, "GET", "/healthz", WRITE).json()
    response = call(served, method, path, READ, **kwargs)
    assert response.status_code == 403 and response.json() == {"detail": "this API key is read-only"}
    assert call(served, "GET", "/healthz", WRITE).json() == before
    assert call(served, "GET", "/items/banana:en", READ).json()["title"] == "banana"


@pytest.mark.parametrize("method,path,kwargs", READS)
def test_the_read_only_key_reads(served, method, path, kwargs):
    assert call(served, method, path, READ, **kwargs).status_code == 200
    assert call(served, method, path, WRITE, **kwargs).status_code == 200


def test_healthz_is_open_but_tells_counts_only_to_a_key(served):
    assert call(served, "GET", "/healthz").json() == {"status": "ok"}
    assert call(served, "GET", "/healthz", READ).json()["items"] >= len(catalog_items())


def test_unknown_paths_need_a_key_too(served):
    assert call(served, "GET", "/no/such/route").status_code == 401
    assert call(served, "GET", "/no/such/route", READ).status_code == 404


def test_a_foreign_host_header_is_refused(served):
    """DNS rebinding: a page on evil.example resolving its name to 127.0.0.1 sends Host: evil.example."""
    response = call(served, "GET", "/items/banana:en", {**READ, "Host": "evil.example"})
    assert response.status_code == 400
    assert call(served, "GET", "/items/banana:en", {**READ, "Host": f"localhost:{served.srv.port}"}).status_code == 200
    response = call(served, "POST", "/items", {**WRITE, "Origin": "https://evil.example"},
                    json={"items": [{"item_id": "csrf", "title": "t"}]})
    assert response.status_code == 403


REFUSED_PATHS = ["/etc/passwd", "/no/such/file.png", "../outside.png", "escape.png", "passwd", "/proc/self/environ",
                 "/root/.ssh/id_rsa", "sub/../../outside.png", "images/../../outside.png"]


def test_image_path_outside_the_image_root_gets_one_answer(served):
    before = call(served, "GET", "/healthz", WRITE).json()["items"]
    answers = set()
    for path in REFUSED_PATHS:
        response = call(served, "POST", "/items", WRITE,
                        json={"items": [{"item_id": "probe", "title": "probe", "image_path": path}]})
        answers.add((response.status_code, response.content))
    assert len(answers) == 1, answers
    status, body = answers.pop()
    assert status == 400 and b"image root" in body and b"passwd" not in body
    assert call(served, "GET", "/items/probe", WRITE).status_code == 404
    assert call(served, "GET", "/healthz", WRITE).json()["items"] == before
    # inside the root it works, by relative or absolute path
    for item_id, path in (("img:rel", "dot.png"), ("img:abs", str(served.images / "dot.png"))):
        item = {"item_id": item_id, "title": "red dot", "image_path": path}
        response = call(served, "POST", "/items", WRITE, json={"items": [item]})
        assert response.status_code == 200, response.text
        assert call(served, "GET", f"/items/{item_id}", READ).json()["has_image"] is True


@pytest.mark.parametrize("path,body", [
    ("/recommend", b'{"history": ["\\ud800"]}'),
    ("/items", b'{"items": [{"item_id": "\\ud800", "title": "t"}]}'),
    ("/events", b'{"events": [{"user_id": "u", "item_id": "banana:en", "kind": "\\ud800"}]}'),
    ("/recommend", b'{"history": ["\xed\xa0\x80"]}'),  # a surrogate encoded as UTF-8 bytes
    ("/recommend", b'{"history": ["\xff"]}'),  # not UTF-8 at all
])
def test_lone_surrogates_and_invalid_utf8_are_4xx(served, path, body):
    response = call(served, "POST", path, {**WRITE, "content-type": "application/json"}, content=body)
    assert 400 <= response.status_code < 500 and response.json()["detail"], response.text


def test_a_30_mb_body_is_413_with_a_small_reply(served):
    body = b'{"items": [{"item_id": "big", "title": "' + b"x" * (30 * 1024 * 1024) + b'"}]}'
    response = call(served, "POST", "/items", {**WRITE, "content-type": "application/json"}, content=body)
    assert response.status_code == 413 and len(response.content) < 200
    # streamed without a Content-Length: counted as it arrives, cut off at the limit
    chunks = (b"x" * (1024 * 1024) for _ in range(30))
    response = call(served, "POST", "/items", {**WRITE, "content-type": "application/json"}, content=chunks)
    assert response.status_code == 413 and len(response.content) < 200
    assert call(served, "GET", "/healthz").status_code == 200


@pytest.mark.parametrize("item_id", ["a/b", "sku/42/red", "%2F-literal", "50% off/x", "/lead", "end/"])
def test_an_id_with_a_slash_can_be_fetched_and_deleted(served, item_id):
    assert call(served, "POST", "/items", WRITE, json={"items": [{"item_id": item_id, "title": "slash lamp"}]}).status_code == 200
    url = f"/items/{quote(item_id, safe='')}"
    assert call(served, "GET", url, READ).json()["item_id"] == item_id
    assert call(served, "DELETE", url, WRITE).json() == {"deleted": item_id}
    assert call(served, "GET", url, READ).status_code == 404


def _files_containing(root: Path, needle: str) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and needle.encode() in path.read_bytes():
            found.append(str(path.relative_to(root)))
    return found


def test_an_erased_user_leaves_no_trace_and_answers_like_a_stranger(served):
    """DELETE /users/U on the running service, `mmrec users delete V` on the stopped one: afterwards no file
    under the data dir holds either id (not their events, not the impressions of what they were shown, not
    their attributed clicks), before and after a restart, and /recommend answers for them exactly as for
    a user never seen."""
    events = [{"user_id": user, "item_id": item, "kind": "purchase"}
              for user in (ERASED_USER, CLI_ERASED_USER, "stays") for item in ("guitar:de", "coffee:fr")]
    assert call(served, "POST", "/events", WRITE, json={"events": events}).json() == {"appended": 6}

    def recommend(user: str) -> dict:
        return call(served, "POST", "/recommend", READ, json={"user_id": user, "k": 5}).json()

    def answer(user: str) -> dict:
        """The answer for `user` as it would read for the stranger (the request id is new each time)."""
        return {**recommend(user), "user_id": "never-seen-user", "request_id": None}

    stranger = answer("never-seen-user")
    shown = recommend(ERASED_USER)
    assert {**shown, "user_id": "never-seen-user", "request_id": None} != stranger
    click = {"user_id": ERASED_USER, "item_id": shown["results"][0]["item_id"], "kind": "click",
             "request_id": shown["request_id"], "position": 1}
    assert call(served, "POST", "/events", WRITE, json={"events": [click]}).json() == {"appended": 1}
    recommend(CLI_ERASED_USER)
    assert _files_containing(served.data, ERASED_USER) == ["events.jsonl", "impressions.jsonl"]
    response = call(served, "DELETE", f"/users/{ERASED_USER}", WRITE)
    assert response.json() == {"user_id": ERASED_USER, "events_deleted": 3, "impressions_deleted": 1}
    assert _files_containing(served.data, ERASED_USER) == []
    assert _files_containing(served.data, CLI_ERASED_USER) == ["events.jsonl", "impressions.jsonl"]
    # the CLI refuses while the service has the event log open, then works on the stopped one
    busy = mmrec_cli("users", "delete", CLI_ERASED_USER, "--data-dir", str(served.data))
    assert busy.returncode == 2 and "DELETE /users" in busy.stderr and "Traceback" not in busy.stderr
    served.srv.stop()
    done = mmrec_cli("users", "delete", CLI_ERASED_USER, "--data-dir", str(served.data))
    assert done.returncode == 0 and "deleted 2 event(s)" in done.stdout, done.stderr
    served.srv = served.start()
    for user in (ERASED_USER, CLI_ERASED_USER):
        assert _files_containing(served.data, user) == []
    for user in (ERASED_USER, CLI_ERASED_USER):  # (asking for them again logs a new impression)
        assert answer(user) == stranger
    stays = call(served, "POST", "/recommend", READ, json={"user_id": "stays"}).json()
    assert stays["history_used"] == ["coffee:fr", "guitar:de"]


def test_no_keys_means_loopback_only(tmp_path, capsys, monkeypatch):
    """Decided before anything is opened (so in-process, through the CLI's main)."""
    from mmrec.cli import main

    monkeypatch.delenv("MMREC_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "--api-key" in err and "--insecure" in err
    monkeypatch.setenv("MMREC_API_KEY", "short")
    assert main(["serve", "--data-dir", str(tmp_path / "d")]) == 2
    assert "too short" in capsys.readouterr().err
    monkeypatch.setenv("MMREC_API_KEY", WRITE_KEY)
    assert main(["serve", "--data-dir", str(tmp_path / "d"), "--read-only-api-key", WRITE_KEY]) == 2
    assert "must differ" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before anything was opened


def test_a_checkpoint_cannot_run_code(tmp_path):
    """A pickle that would run a command when loaded without weights_only is refused, and nothing runs."""
    import torch

    from mmrec.errors import UserError
    from mmrec.model.checkpoint import load_checkpoint

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"format": "mmrec-fusion/1", "config": Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(UserError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_the_openapi_document_declares_the_keys():
    from mmrec.serving.app import openapi_spec

    spec = openapi_spec()
    assert set(spec["components"]["securitySchemes"]) == {"api-key", "bearer"}
    assert "security" not in spec["paths"]["/healthz"]["get"]
    assert spec["paths"]["/recommend"]["post"]["security"]
    json.dumps(spec)  # serialisable as it is served
