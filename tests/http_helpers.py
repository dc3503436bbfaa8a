"""Loopback helpers for the HTTP tests: the real Cog server (coglet) in a subprocess, and a small HTTP
receiver that serves files, records webhooks and accepts uploads."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(method: str, url: str, body: dict | None = None, headers: dict | None = None, timeout: float = 120):
    """(status, parsed JSON body) for one HTTP request."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw.decode(errors="replace")


class CogServer:
    """``python -m cog.server.http`` on 127.0.0.1 with predict.py, as Cog runs it in the container."""

    def __init__(self, weights: Path | str, upload_url: str | None = None, extra_env: dict | None = None,
                 make_serve: bool = False):
        """``make_serve``: start it as `make serve` does (``python -m musicgen_dev.serve``), not bare."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        bin_dir = str(Path(sys.executable).parent)  # coglet's worker runs the first `python` on PATH
        env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
               "COG_PREDICT_TYPE_STUB": "predict.py:Predictor", "PORT": str(self.port),
               "MUSICGEN_WEIGHTS": str(weights), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
               **(extra_env or {})}
        args = ([sys.executable, "-m", "musicgen_dev.serve"] if make_serve else
                [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"])
        if upload_url:
            args += ["--upload-url", upload_url]
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"cog-server-{self.port}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_health(self, statuses=("READY", "SETUP_FAILED"), timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.logs()}")
            try:
                status, last = request("GET", self.url + "/health-check", timeout=5)
                if status == 200 and last.get("status") in statuses:
                    return last
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise TimeoutError(f"server not {statuses} after {timeout} s (last: {last}); log: {self.logs()}")

    def predict(self, inputs: dict, headers: dict | None = None, prediction_id: str | None = None,
                webhook: str | None = None, events: list[str] | None = None, retries_409: float = 5.0):
        """POST /predictions (PUT /predictions/<id> with an id); retries a brief 409 after a prediction."""
        body: dict = {"input": inputs}
        if webhook:
            body["webhook"] = webhook
        if events is not None:
            body["webhook_events_filter"] = events
        method, url = ("PUT", f"{self.url}/predictions/{prediction_id}") if prediction_id else ("POST", self.url + "/predictions")
        deadline = time.monotonic() + retries_409
        while True:
            status, payload = request(method, url, body, headers)
            if status != 409 or time.monotonic() > deadline:
                return status, payload
            time.sleep(0.1)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.log_path.unlink(missing_ok=True)  # read while it ran (logs()); nothing left behind in TMPDIR


class Receiver:
    """A loopback HTTP server: GET serves ``files``; POST records JSON (webhooks); PUT stores uploads."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.posts: list[dict] = []
        self.uploads: dict[str, bytes] = {}
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self):
                data = outer.files.get(self.path)
                self.send_response(200 if data is not None else 404)
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

            def do_POST(self):
                payload = json.loads(self._body() or b"null")
                with outer.cond:
                    outer.posts.append(payload)
                    outer.cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_PUT(self):
                data = self._body()
                with outer.cond:
                    outer.uploads[self.path] = data
                    outer.cond.notify_all()
                self.send_response(201)
                self.send_header("Location", f"http://127.0.0.1:{outer.port}{self.path}")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, predicate, timeout: float = 120):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("receiver: condition not met")
                self.cond.wait(left)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
