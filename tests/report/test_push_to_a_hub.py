"""`evo-merge push` against a fake Hub on 127.0.0.1. The other push tests stop at the offline refusal
or a dry run, so the calls a real upload makes (the repo created private or public, the branch
created, the commit made on it with the folder's bytes) ran nowhere. Here huggingface_hub's own
code sends real HTTP requests; the server records them and answers only what the library reads."""

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from click.testing import CliRunner

from evo_merge.cli import cli
from evo_merge.report.upload import plan_upload, push_to_hub
from evo_merge.weights import write_model_folder

CARD = "---\ntags: [merge, evo-merge]\n---\n# fine\n"
REPO = "me/tiny-merge"
TOKEN = "hf_fake_token_for_a_fake_hub"
OID = "0123456789abcdef0123456789abcdef01234567"
REPO_ROUTE = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/(?P<action>branch|preupload|commit)/(?P<revision>[^/]+)")


class FakeHub(BaseHTTPRequestHandler):
    """The Hub routes an upload calls, each answered with the keys huggingface_hub reads."""

    def do_GET(self):  # the repo's info: whether it is private
        path = self.path.split("?")[0]
        if not path.startswith("/api/models/"):  # the library's own lookups (its agent harnesses, once)
            return self.answer(404, {"error": "not here"})
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.requests.append({"method": "GET", "path": path, "body": None, "headers": headers})
        repo = path.removeprefix("/api/models/")
        if repo in self.server.existing:
            self.answer(200, {"id": repo, "private": self.server.existing[repo], "sha": OID})
        else:
            self.answer(404, {"error": "Repository not found"}, error="Repository not found")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        ndjson = self.headers.get("Content-Type", "").startswith("application/x-ndjson")
        parsed = [json.loads(line) for line in body.splitlines() if line] if ndjson else json.loads(body or b"null")
        path = self.path.split("?")[0]
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.requests.append({"method": self.command, "path": path, "body": parsed, "headers": headers})
        route = REPO_ROUTE.fullmatch(path)
        if path == "/api/repos/create":
            repo = f"{parsed['organization']}/{parsed['name']}"
            if repo in self.server.existing:  # the Hub's answer to a repo that exists: 409, with its url
                self.answer(409, {"error": "You already created this model repo", "url": f"{self.server.url}/{repo}"})
            else:
                self.server.existing[repo] = parsed.get("visibility") == "private"
                self.answer(200, {"url": f"{self.server.url}/{repo}"})
        elif path == "/api/validate-yaml":  # the card's metadata, checked before a commit holding README.md
            self.answer(200, {})
        elif route and route["action"] == "preupload":  # every file a regular git blob: no LFS route needed
            self.answer(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                        for f in parsed["files"]]})
        elif route and route["action"] == "commit" and self.server.commit_error:
            status, reason = self.server.commit_error
            self.answer(status, {"error": reason}, error=reason)
        elif route and route["action"] == "commit":
            self.answer(200, {"commitUrl": f"{self.server.url}/{route['repo']}/commit/{OID}", "commitOid": OID})
        elif route:
            self.answer(200, {})
        else:
            self.answer(404, {"error": f"no route {path}"})

    def answer(self, status, payload, error=None):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if error and "\n" not in error:  # the Hub says why in this header as well as in the body (one line)
            self.send_header("X-Error-Message", error)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # no request lines on the test's stderr
        pass


@pytest.fixture
def hub(monkeypatch, request):
    """A fake Hub serving in a thread; huggingface_hub pointed at it, online, with a fake token."""
    from huggingface_hub import constants

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    server.url, server.requests, server.commit_error = f"http://127.0.0.1:{server.server_port}", [], None
    server.existing = {}  # repo id -> private
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()
        thread.join()

    request.addfinalizer(stop)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)  # read once at import; HfApi() reads this copy
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # tests/conftest.py sets it before the import
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return server


def model_folder(tmp_path):
    return write_model_folder(tmp_path / "m", [("w", torch.ones(3))], extra_files={"README.md": CARD})


def calls(hub):
    """Each request as its route's action: create, info, validate-yaml, branch, preupload, commit."""
    return ["info" if r["method"] == "GET" else m["action"] if (m := REPO_ROUTE.fullmatch(r["path"]))
            else r["path"].rsplit("/", 1)[-1] for r in hub.requests]


def only(hub, action):
    (found,) = [r for r, a in zip(hub.requests, calls(hub)) if a == action]
    return found


def committed_files(commit):
    assert commit["body"][0]["key"] == "header"
    lines = commit["body"][1:]
    assert {line["key"] for line in lines} == {"file"}  # every file inline: nothing deleted, no LFS pointer
    assert {line["value"]["encoding"] for line in lines} == {"base64"}
    return {line["value"]["path"]: base64.b64decode(line["value"]["content"]) for line in lines}


def test_push_creates_the_private_repo_and_branch_and_commits_the_folder_on_that_branch(hub, tmp_path):
    folder = model_folder(tmp_path)
    result = CliRunner().invoke(cli, ["push", str(folder), REPO, "--private", "--revision", "v1"])
    assert result.exit_code == 0, result.output
    # the branch before the commit; the repo asked whether it is private (a public one would be published to)
    assert calls(hub) == ["create", "info", "branch", "validate-yaml", "preupload", "commit"]
    assert all(r["headers"]["authorization"] == f"Bearer {TOKEN}" for r in hub.requests)
    created = only(hub, "create")["body"]
    assert (created["organization"], created["name"], created["type"]) == ("me", "tiny-merge", "model")
    assert created["visibility"] == "private"
    assert only(hub, "branch")["path"] == "/api/models/me/tiny-merge/branch/v1"
    assert only(hub, "preupload")["path"] == "/api/models/me/tiny-merge/preupload/v1"
    commit = only(hub, "commit")
    assert commit["path"] == "/api/models/me/tiny-merge/commit/v1"
    on_disk = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert set(on_disk) == {"README.md", "model.safetensors"}
    assert committed_files(commit) == on_disk
    assert on_disk["README.md"] == CARD.encode()
    assert result.stdout.strip() == f"uploaded: {hub.url}/me/tiny-merge/commit/{OID}"


def test_push_without_revision_or_private_commits_to_main_of_a_repo_of_the_owner_s_visibility(hub, tmp_path):
    """Without --private a new repo takes its owner's default visibility (an organisation's may be
    private): the push said public, and made one."""
    folder = model_folder(tmp_path)
    url = push_to_hub(plan_upload(folder), REPO)
    assert url == f"{hub.url}/me/tiny-merge/commit/{OID}"
    assert "branch" not in calls(hub) and "info" not in calls(hub)
    assert "visibility" not in only(hub, "create")["body"] and "private" not in only(hub, "create")["body"]
    assert only(hub, "preupload")["path"] == "/api/models/me/tiny-merge/preupload/main"
    commit = only(hub, "commit")
    assert commit["path"] == "/api/models/me/tiny-merge/commit/main"
    assert committed_files(commit) == {p.name: p.read_bytes() for p in folder.iterdir()}

    hub.requests.clear()
    result = CliRunner().invoke(cli, ["push", str(folder), REPO])  # the command: the same requests
    assert result.exit_code == 0, result.output
    assert calls(hub) == ["create", "validate-yaml", "preupload", "commit"]
    assert "visibility" not in only(hub, "create")["body"] and hub.requests[-1]["path"].endswith("/commit/main")


def test_private_on_an_existing_public_repo_is_refused_before_any_file_is_sent(hub, tmp_path):
    """The Hub keeps an existing repo's visibility: --private on a public one published the model."""
    hub.existing[REPO] = False
    result = CliRunner().invoke(cli, ["push", str(model_folder(tmp_path)), REPO, "--private"])
    assert result.exit_code == 2 and result.output.strip() == (
        f"error: {REPO} exists and is public: --private does not change an existing repo; make it private on the "
        "Hub first, or push without --private"), result.output
    assert calls(hub) == ["create", "info"]  # nothing committed
    hub.existing[REPO], hub.requests[:] = True, []
    assert CliRunner().invoke(cli, ["push", str(tmp_path / "m"), REPO, "--private"]).exit_code == 0
    assert calls(hub)[-1] == "commit"


def test_a_commit_the_hub_refuses_is_one_error_line_naming_the_repo_and_the_reason(hub, tmp_path):
    hub.commit_error = (403, "You don't have the rights to create a commit in me/tiny-merge")
    result = CliRunner().invoke(cli, ["push", str(model_folder(tmp_path)), REPO, "--private", "--revision", "v1"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.stdout == ""  # no "uploaded:" line
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: upload to {REPO} failed:"), line
    assert "403" in line and "You don't have the rights to create a commit" in line
    assert calls(hub)[-1] == "commit"  # refused at the commit, after the repo and branch were made


@pytest.mark.parametrize("status", [400, 413])
def test_the_hub_s_reason_for_a_refusal_is_in_the_error_line(hub, tmp_path, status):
    """huggingface_hub words most refusals as the status and the URL, its reason on a later line or
    not at all: the error line carried `Bad request for commit endpoint:` and no reason."""
    hub.commit_error = (status, "Your commit is too large for this repo")
    result = CliRunner().invoke(cli, ["push", str(model_folder(tmp_path)), REPO])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: upload to {REPO} failed: "), line
    assert line.endswith(": Your commit is too large for this repo") and "::" not in line, line
    assert line.count("Your commit is too large") == 1, line


def test_a_reason_over_several_lines_is_said_on_one(hub, tmp_path):
    hub.commit_error = (400, "Invalid metadata in README.md.\n- license: not a valid license id")
    result = CliRunner().invoke(cli, ["push", str(model_folder(tmp_path)), REPO])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.endswith("Invalid metadata in README.md. - license: not a valid license id"), line


def test_a_hub_that_cannot_be_reached_is_one_error_line(hub, tmp_path, monkeypatch):
    """huggingface_hub 2.x sends its requests with httpx2, whose connection errors are no OSError: a push
    with no route to the Hub ended in a traceback and exit 1 (audit 137)."""
    import socket

    from huggingface_hub import constants

    with socket.socket() as probe:  # a port nothing listens on: the connection is refused at once
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", closed)
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    result = CliRunner().invoke(cli, ["push", str(model_folder(tmp_path)), REPO])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: upload to {REPO} failed: "), line
    assert hub.requests == []
