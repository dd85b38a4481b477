"""A throwaway redis-server on loopback for the baselines (Debian's redis-server, installed by
``benchmarks/setup.sh``)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time

import redis


class RedisServer:
    def __init__(self, port: int = 6399) -> None:
        if shutil.which("redis-server") is None:
            raise SystemExit("redis-server is missing: run benchmarks/setup.sh first")
        self.port = port
        self.dir = tempfile.mkdtemp(prefix="shoveling-redis-")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir],
            stdout=subprocess.DEVNULL,
        )
        self.client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(100):
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise SystemExit("redis-server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
