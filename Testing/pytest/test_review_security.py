"""Issue 28: ``deeplungreg review`` answers only its own page (a per-launch token, the WebSocket's
``Origin`` checked, loopback unless ``--allow-remote``); the review's Export never writes through a
link, writes each file through a new temporary file, and reports a failure in one line; a mistyped
field of ``metrics.json`` is one line that names it.

The server test talks to the server as a foreign page or script would: a WebSocket (aiohttp's client)
speaking wslink (msgpack in wslink's chunks), the hello with or without the token, then trame's
``trame.state.get``.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from DeepLungRegLib import DeepLungRegError
from DeepLungRegLib.browser import ReviewFolder
from DeepLungRegLib.geometry import Geometry
from DeepLungRegLib.slicer_bridge.review import REVIEW_FILES, LandmarkReview

ROOT = Path(__file__).resolve().parents[2]


def _need_review_extra() -> None:
    from DeepLungRegLib.browser.app import missing_dependencies

    if missing_dependencies():
        msg = f"needs {', '.join(missing_dependencies())} (pip install 'DeepLungRegLib[review]')"
        if os.environ.get("DEEPLUNGREG_REQUIRE_BROWSER") == "1" or os.environ.get("DEEPLUNGREG_REQUIRE_SHARED") == "1":
            pytest.fail(msg + "; CI forbids skipping it")
        pytest.skip(msg)


@pytest.fixture(scope="module")
def registered(tmp_path_factory, sample_path):
    """A small registration output with landmarks (affine on a 6 mm pair)."""
    from DeepLungRegLib.cli import main as cli

    root = tmp_path_factory.mktemp("review-security")
    pair, out = root / "pair", root / "out"
    assert cli(["simulate", str(sample_path), "-o", str(pair), "--amplitude", "small", "--seed", "2", "--spacing", "6",
                "--landmarks", "30", "-q"]) == 0
    assert cli(["register", str(pair / "fixed.nii.gz"), str(pair / "moving.nii.gz"), "-o", str(out), "--method", "affine",
                "--fixed-mask", str(pair / "fixed_mask.nii.gz"), "--moving-mask", str(pair / "moving_mask.nii.gz"),
                "--fixed-landmarks", str(pair / "fixed_landmarks.csv"), "--moving-landmarks", str(pair / "moving_landmarks.csv"),
                "-q"]) == 0
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------- metrics.json
def _set(path: str, value):
    """A change to metrics.json: set the field at ``path`` ("a.b.0") to ``value``."""
    def change(m: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            m = m[int(key)] if isinstance(m, list) else m[key]
        m[int(last) if isinstance(m, list) else last] = value
    return change


MISTYPED = {  # field named in the line: the change
    "text where a number is": ("tre_after.mean", _set("tre_after.mean", "1.4")),
    "text in a list of numbers": ("fixed_grid.spacing", _set("fixed_grid.spacing", ["6", "6", "6"])),
    "a list where an object is": ("job", lambda m: m.__setitem__("job", list(m["job"].values()))),
    "an older folder's inputs as a list": ("inputs", lambda m: (m.pop("job"), m.__setitem__("inputs", ["f.nii.gz", "m.nii.gz"]))),
    "an object where a list is": ("tre_per_landmark", _set("tre_per_landmark", {"P-1": {"before": 1.0, "after": 1.0}})),
    "null where an object is": ("jacobian", _set("jacobian", None)),
    "a number where text is": ("job.fixed", _set("job.fixed", 7)),
    "a point of two numbers": ("landmarks.fixed_lps", _set("landmarks.fixed_lps.0", [1.0, 2.0])),
    "an object where names are": ("landmarks.labels", _set("landmarks.labels", {"P-1": 0})),
    "text where points are": ("landmarks.fixed_lps", _set("landmarks.fixed_lps", "1,2,3")),
    "a list where the grid is": ("fixed_grid", _set("fixed_grid", [61, 49, 48])),
    "a number where the method is": ("method", _set("method", 5)),
}


def _damaged(out: Path, dest: Path, change) -> Path:
    shutil.copytree(out, dest)
    m = json.loads((dest / "metrics.json").read_text())
    change(m)
    (dest / "metrics.json").write_text(json.dumps(m))
    return dest


@pytest.mark.parametrize("case", list(MISTYPED))
def test_a_mistyped_metrics_field_is_one_line_that_names_it(registered, tmp_path, case):
    """Before: a traceback later on (AttributeError, TypeError, ValueError while building the page), a
    misleading line, or a page served from a wrong grid. After: one line naming the field."""
    field, change = MISTYPED[case]
    folder = _damaged(registered, tmp_path / "damaged", change)
    with pytest.raises(DeepLungRegError, match=re.escape(f"metrics.json is damaged: field '{field}' should be")) as err:
        ReviewFolder.open(folder)
    assert "\n" not in str(err.value)


def test_the_review_command_names_a_mistyped_field_in_one_line(registered, tmp_path, capsys):
    from DeepLungRegLib.cli import main as cli

    folder = _damaged(registered, tmp_path / "damaged", MISTYPED["null where an object is"][1])
    assert cli(["review", str(folder), "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "field 'jacobian' should be an object" in err[0]


def test_a_well_typed_output_still_opens(registered):
    assert ReviewFolder.open(registered).views["landmarks"]


# --------------------------------------------------------------------- Export
def _review(n: int = 4) -> LandmarkReview:
    """A small review: ``n`` landmarks and a zero field on an 8 mm cube."""
    rng = np.random.default_rng(0)
    fixed = rng.uniform(10, 50, (n, 3))
    return LandmarkReview(fixed, fixed + 1.0, np.zeros((8, 8, 8, 3)), Geometry((8, 8, 8), (8.0, 8.0, 8.0)))


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: (os.readlink(p).encode() if p.is_symlink() else p.read_bytes()) for p in sorted(folder.iterdir())}


@pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="symbolic links need POSIX here")
@pytest.mark.parametrize("overwrite", [False, True])
def test_export_refuses_a_symlinked_review_csv_and_leaves_its_target_untouched(tmp_path, overwrite):
    """Before: Export opened review.csv for writing and wrote through the link (and ``exists()`` is
    false for a dangling link, so even the earlier-review check passed). After: refused, nothing written."""
    folder, elsewhere = tmp_path / "shared", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    victim = elsewhere / "notes.txt"
    victim.write_text("the user's own notes\n")
    review = _review()
    for name, target in (("review.csv", victim), ("reviewed_moving_landmarks.mrk.json", elsewhere / "not-there-yet.json")):
        (folder / name).symlink_to(target)
        before = _listing(folder)
        with pytest.raises(DeepLungRegError, match=f"{re.escape(name)} is a symbolic link") as err:
            review.export(folder, overwrite=overwrite)
        assert "\n" not in str(err.value)
        assert victim.read_text() == "the user's own notes\n" and sorted(p.name for p in elsewhere.iterdir()) == ["notes.txt"]
        assert _listing(folder) == before  # nothing written, no temporary file left
        (folder / name).unlink()


def test_export_replaces_each_file_by_a_new_one(tmp_path):
    """An earlier review.csv hard-linked elsewhere keeps its content there: Export writes a new file and
    renames it over the name (before: it wrote into the existing file, so through the hard link too)."""
    folder = tmp_path / "out"
    review = _review()
    review.export(folder)
    elsewhere = tmp_path / "kept.csv"
    os.link(folder / "review.csv", elsewhere)
    kept = elsewhere.read_bytes()
    review.flag("looked again", index=0)
    written = review.export(folder, overwrite=True)
    assert sorted(p.name for p in written) == sorted(REVIEW_FILES) == sorted(p.name for p in folder.iterdir())
    assert elsewhere.read_bytes() == kept and b"looked again" in (folder / "review.csv").read_bytes()
    again = LandmarkReview.load(folder / "review.csv", review.field, review.geometry)
    assert again.status == review.status and np.allclose(again.moving, review.moving, atol=1e-4)


def test_exported_files_follow_the_umask(tmp_path):
    if sys.platform == "win32":
        pytest.skip("POSIX permissions")
    old = os.umask(0o022)
    try:
        _review().export(tmp_path)
    finally:
        os.umask(old)
    assert {oct((tmp_path / n).stat().st_mode & 0o777) for n in REVIEW_FILES} == {oct(0o644)}


def _export_unprivileged(review: LandmarkReview, folder: Path) -> str | None:
    """Export into ``folder`` as a user its permissions stop: this process, or, when the tests run as root
    (whom permissions do not stop), a forked child that has become user nobody. Returns the refusal's
    line, or ``None`` when the export went through."""
    if os.geteuid() != 0:
        try:
            review.export(folder, overwrite=True)
        except DeepLungRegError as exc:
            return str(exc)
        return None
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                review.export(folder, overwrite=True)
                code = 0
            except DeepLungRegError as exc:
                os.write(write, str(exc).encode())
                code = 3
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        message = fh.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) in (0, 3), f"the export's child failed ({status})"
    return message if os.WEXITSTATUS(status) == 3 else None


@pytest.mark.skipif(sys.platform == "win32", reason="read-only folders are POSIX permissions here")
def test_export_into_a_read_only_folder_is_one_line_and_leaves_it_as_it_was():
    """Before: PermissionError's traceback (and the page showed nothing). After: one line; the folder
    as it was, without temporary files."""
    root = Path(tempfile.mkdtemp(prefix="deeplungreg-readonly-"))
    folder = root / "results"
    try:
        root.chmod(0o755)
        folder.mkdir()
        (folder / "review.csv").write_text("an earlier review\n")
        folder.chmod(0o555)
        before = _listing(folder)
        review = _review()
        review.tre()  # the field sampled once here, not first in a forked child
        message = _export_unprivileged(review, folder)
        assert message is not None and "\n" not in message
        assert message.startswith(f"review: cannot write the review into {folder} (Permission denied")
        assert _listing(folder) == before
    finally:
        if folder.exists():
            folder.chmod(0o755)
        shutil.rmtree(root)


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
