"""Start and stop real `braid serve` subprocesses on free 127.0.0.1 ports; read their metrics."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

API_KEY = "test-key"


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log: Path
    api_key: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, **kw):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.api_key or "none", **kw)

    def async_client(self, **kw):
        import openai

        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=self.api_key or "none", **kw)

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.headers, timeout=30, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        kw.setdefault("headers", self.headers)
        return httpx.post(self.url + path, timeout=60, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], log: Path, api_key: str | None = None) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "braid.cli", "serve", "--port", str(port), "--threads", "1"]
    cmd += args + (["--api-key", api_key] if api_key else [])
    env = {k: v for k, v in os.environ.items() if k != "BRAID_API_KEY"}
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(process, port, log, api_key)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"braid serve exited {process.returncode}: {log.read_text()}")
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"braid serve did not become healthy: {log.read_text()}")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def scrape(server) -> dict[tuple, float]:
    """/metrics read by prometheus_client's own parser: (name, labels) -> value."""
    text = server.get("/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "model_name"))
            out[(s.name, labels)] = s.value
    return out


def value(metrics, name, **labels) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_idle(server, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(server)
        busy = [
            value(m, n)
            for n in (
                "vllm:num_requests_running",
                "vllm:num_requests_waiting",
                "braid:kv_cache_slots_used",
                "braid:draft_cache_slots_used",
            )
        ]
        if not any(busy) or time.monotonic() > deadline:
            return m
        time.sleep(0.1)
