"""Tests of DeepLungRegLib/browser/app.py's server and page (issue 28).

``deeplungreg review`` answers only its own page (a per-launch token, the WebSocket's
``Origin`` checked, loopback unless ``--allow-remote``); the review's Export never writes through a
link, writes each file through a new temporary file, and reports a failure in one line; a mistyped
field of ``metrics.json`` is one line that names it.

The server test talks to the server as a foreign page or script would: a WebSocket (aiohttp's client)
speaking wslink (msgpack in wslink's chunks), the hello with or without the token, then trame's
``trame.state.get``.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from DeepLungRegLib import DeepLungRegError
from DeepLungRegLib.browser import ReviewFolder
from DeepLungRegLib.slicer_bridge.review import REVIEW_FILES

from helpers_review import _free_port, registered


ROOT = Path(__file__).resolve().parents[2]


def _need_review_extra() -> None:
    from DeepLungRegLib.browser.app import missing_dependencies

    if missing_dependencies():
        msg = f"needs {', '.join(missing_dependencies())} (pip install 'DeepLungRegLib[review]')"
        if os.environ.get("DEEPLUNGREG_REQUIRE_BROWSER") == "1" or os.environ.get("DEEPLUNGREG_REQUIRE_SHARED") == "1":
            pytest.fail(msg + "; CI forbids skipping it")
        pytest.skip(msg)


@pytest.mark.slow
def test_the_page_reports_a_failed_export_in_one_line(registered, tmp_path, slicer_core):
    """Export from the page into a folder where it cannot write: the page's message is the one line
    (before: the exception escaped the button's handler and the page showed nothing)."""
    _need_review_extra()
    from DeepLungRegLib.browser.app import ReviewPage

    folder = tmp_path / "out"
    shutil.copytree(registered, folder)
    (folder / "reviewed_moving_landmarks.mrk.json").mkdir()  # in the way, whoever runs the test
    page = ReviewPage(ReviewFolder.open(folder))
    page.state.overwrite = True
    assert page.export() == []
    assert page.state.message.startswith("review: ") and "reviewed_moving_landmarks.mrk.json is not a file" in page.state.message
    assert "\n" not in page.state.message and not (folder / "review.csv").exists()
    if sys.platform != "win32":
        (folder / "reviewed_moving_landmarks.mrk.json").rmdir()
        (folder / "review.csv").symlink_to(tmp_path / "elsewhere.csv")
        assert page.export() == [] and "review.csv is a symbolic link" in page.state.message
        assert not (tmp_path / "elsewhere.csv").exists()
        (folder / "review.csv").unlink()
    assert sorted(p.name for p in page.export()) == sorted(REVIEW_FILES) and page.state.message.startswith("Exported")


# --------------------------------------------------------------------- the server
def test_hosts_and_origins():
    from DeepLungRegLib.browser.app import check_host, is_loopback, new_token, origin_allowed

    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.5"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "", "::", "192.168.1.20"))
    assert check_host("127.0.0.1") is None and check_host("localhost", allow_remote=True) is None
    with pytest.raises(DeepLungRegError, match="--allow-remote"):
        check_host("0.0.0.0")
    assert "other computers" in check_host("0.0.0.0", allow_remote=True)
    local = ("127.0.0.1", 8080)
    assert origin_allowed("http://127.0.0.1:8080", local, "127.0.0.1")
    assert origin_allowed("http://localhost:8080", local, "127.0.0.1")
    for origin in (None, "", "null", "http://evil.example", "http://evil.example:8080", "http://127.0.0.1:8081",
                   "https://127.0.0.1:8080", "http://127.0.0.1", "http://localhost.evil.example:8080", "file://"):
        assert not origin_allowed(origin, local, "127.0.0.1"), origin
    # on every interface: the address the connection reached, or this computer's name
    assert origin_allowed("http://192.168.1.20:8080", ("::ffff:192.168.1.20", 8080), "0.0.0.0")
    assert origin_allowed(f"http://{socket.gethostname()}:8080", ("192.168.1.20", 8080), "0.0.0.0")
    assert not origin_allowed("http://192.168.1.21:8080", ("192.168.1.20", 8080), "0.0.0.0")
    assert not origin_allowed("http://rebound.example:8080", ("192.168.1.20", 8080), "0.0.0.0")
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50 and all(len(t) >= 43 and re.fullmatch(r"[\w-]+", t) for t in tokens)


def test_a_non_loopback_host_needs_allow_remote(tmp_path, capsys):
    """Before: ``--host 0.0.0.0`` bound every interface without a word. After: refused in one line
    without ``--allow-remote``; with it, a warning (here followed by the folder's own refusal)."""
    from DeepLungRegLib.cli import main as cli

    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(["review", str(empty), "--host", "0.0.0.0", "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--host 0.0.0.0 would let other computers reach the page" in err[0] and "--allow-remote" in err[0]
    assert cli(["review", str(empty), "--host", "0.0.0.0", "--allow-remote", "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "warning: --host 0.0.0.0 lets other computers reach the page" in err[0]
    assert "is not a registration output" in err[1]


class _Server:
    """``deeplungreg review FOLDER`` in a child process; its output read by a thread, so waiting for the
    ready line has a deadline."""

    def __init__(self, folder: Path, port: int) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-m", "DeepLungRegLib.cli", "review", str(folder), "--port", str(port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stdout], daemon=True).start()

    def ready_line(self, timeout_s: float = 240) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, min(1.0, deadline - time.monotonic())))
            except queue.Empty:
                assert self.proc.poll() is None, "the review server ended before it was ready"
                continue
            if "Ctrl+C stops" in line:
                return line
        raise AssertionError(f"the review server was not ready in {timeout_s:.0f} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _session(url: str, origin: str | None, secret: str | None) -> dict:
    """Open the WebSocket with ``origin`` and say wslink's hello with ``secret``, then ask trame for its
    state. Returns the handshake's HTTP status when refused, else the hello's and the state call's answers."""
    import aiohttp
    import msgpack
    from wslink.chunking import UnChunker, generate_chunks

    headers = {"Origin": origin} if origin is not None else {}
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(url, headers=headers)
        except aiohttp.WSServerHandshakeError as exc:
            return {"refused": exc.status}
        chunks = UnChunker()
        chunks.set_max_message_size(1 << 30)

        async def call(rpc_id: str, method: str, args: list) -> dict:
            message = msgpack.packb({"wslink": "1.0", "id": rpc_id, "method": method, "args": args, "kwargs": {}})
            for chunk in generate_chunks(message, 0):
                await ws.send_bytes(chunk)
            while True:
                received = await ws.receive(timeout=120)
                assert received.type == aiohttp.WSMsgType.BINARY, received
                reply = chunks.process_chunk(received.data)
                if reply is not None and reply.get("id") == rpc_id:
                    return reply

        hello = await call("system:c0:0", "wslink.hello", [{} if secret is None else {"secret": secret}])
        state = await call("rpc:c0:1", "trame.state.get", [])
        await ws.close()
        return {"hello": hello, "state": state}


@pytest.mark.slow
def test_the_review_server_answers_only_its_own_page(registered, tmp_path):
    """A page from another origin, a script without an Origin, and a client without the token (or with
    wslink's default one) are refused; the page's own origin with the printed token is answered.
    Before: every one of them could read the state and press Export."""
    _need_review_extra()
    folder = tmp_path / "out"
    shutil.copytree(registered, folder)
    port = _free_port()
    server = _Server(folder, port)
    try:
        line = server.ready_line()
        ws = f"ws://127.0.0.1:{port}/ws"
        own = f"http://127.0.0.1:{port}"
        # another origin, and none at all: refused before the WebSocket opens, token or not
        token_given = re.search(r"[?&]secret=([\w-]+)", line)
        token = token_given.group(1) if token_given else "wslink-secret"
        for origin in ("http://evil.example", f"http://evil.example:{port}", f"http://127.0.0.1:{port + 1}", None):
            assert asyncio.run(_session(ws, origin, token)) == {"refused": 403}, origin
        # the page's URL carries a per-launch token
        assert token_given, f"the printed URL has no token: {line}"
        assert f"{own}/?secret={token}" in line and len(token) >= 43
        # the page's origin without the token, or with wslink's default: every call is refused
        for secret in (None, "wslink-secret", token[:-1], ""):
            got = asyncio.run(_session(ws, own, secret))
            assert got["hello"]["error"]["message"] == "Authentication failed", got
            assert "Unauthorized" in got["state"]["error"]["message"] and "result" not in got["state"], got
        # the page itself: its origin (either name of loopback) and its token
        for origin in (own, f"http://localhost:{port}"):
            got = asyncio.run(_session(ws, origin, token))
            assert "clientID" in got["hello"]["result"], got["hello"]
            state = got["state"]["result"]
            state = state.get("state", state)
            assert state["folder_name"] == str(folder) and "TRE" in state["summary"]
    finally:
        server.stop()
