"""A real S3 API for the remote-store tests: moto's server on loopback, one per test.

Import the fixtures into a test module (``from remote_fixtures import moto, ...``).
fsspec runs s3fs on one I/O thread (and its loop's executor) for the life of the process;
they are started here, at import, so the ``no_leaks`` check does not count them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fsspec.asyn
import pytest

from ckptd_client.manifest import Lineage, commit, new_temp_dir

from conftest import FAKES, Job

_PORT_LINE = re.compile(rb"Running on http://127\.0\.0\.1:(\d+)")
_EXECUTOR_THREADS = 4


def _start_fsspec_threads() -> None:
    loop = fsspec.asyn.get_loop()
    executor = ThreadPoolExecutor(_EXECUTOR_THREADS, thread_name_prefix="fsspec-executor")
    loop.call_soon_threadsafe(loop.set_default_executor, executor)
    barrier = threading.Barrier(_EXECUTOR_THREADS + 1)
    for _ in range(_EXECUTOR_THREADS):
        executor.submit(barrier.wait)
    barrier.wait()


_start_fsspec_threads()


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1; ``port`` 0 picks a free one (read from its log)."""

    def __init__(self, log: Path, bucket: str = "ckptd-test") -> None:
        self.log = log
        self.bucket = bucket
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def options(self) -> dict[str, Any]:
        """fsspec storage options for this server (what ``[storage.options]`` would hold)."""
        return {
            "endpoint_url": self.endpoint,
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"region_name": "us-east-1"},
        }

    @property
    def env(self) -> dict[str, str]:
        """The same options as environment variables, for a ``ckptd`` subprocess."""
        return {
            "FSSPEC_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def url(self, prefix: str = "run") -> str:
        return f"s3://{self.bucket}/{prefix}"

    def start(self) -> MotoServer:
        """Start the server (on the same port as before, after a stop) and create the bucket."""
        with open(self.log, "ab") as out:
            offset = out.tell()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while not (match := _PORT_LINE.search(self.log.read_bytes()[offset:])):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start: {self.log.read_text()[-500:]}")
            time.sleep(0.05)
        self.port = int(match.group(1))
        try:
            self._create_bucket()
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL the server: connections in flight break, everything stored is lost."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def freeze(self) -> None:
        """SIGSTOP the server: connections are accepted by the kernel and never answered."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: the server answers again, the requests that waited included."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def logged(self, text: str) -> bool:
        """Whether the server has answered a request whose log line contains ``text``."""
        return text.encode() in self.log.read_bytes()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a frozen server cannot act on SIGTERM
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def _create_bucket(self) -> None:
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True, **self.options)
        deadline = time.monotonic() + 30
        while True:
            try:
                fs.call_s3("create_bucket", Bucket=self.bucket)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path / "moto.log").start()
    try:
        yield server
    finally:
        server.stop()


def make_checkpoint(
    checkpoint_dir: Path,
    step: int,
    files: dict[str, bytes] | None = None,
    lineage: str | None = None,
) -> Path:
    """Commit a checkpoint of ``step`` with ``files`` (default: two small ones), recording
    ``lineage`` (default: none, as before lineages were recorded)."""
    temp = new_temp_dir(checkpoint_dir, step)
    for rel, data in (files or {"model.pt": os.urandom(4096), "sub/opt.bin": b"x" * 1000}).items():
        (temp / rel).parent.mkdir(parents=True, exist_ok=True)
        (temp / rel).write_bytes(data)
    recorded = Lineage(lineage) if lineage is not None else None
    path, _ = commit(temp, step, {"loss": 1.0 / (step + 1)}, recorded)
    return path


def tree(path: Path) -> dict[str, bytes]:
    """Every file below ``path`` by relative name, with its contents."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


@pytest.fixture
def machines(tmp_path: Path) -> Iterator[Callable[[str], Job]]:
    """Jobs each on its own "machine" (base directory); all killed at the end."""
    made: list[Job] = []

    def make(name: str) -> Job:
        base = tmp_path / name
        base.mkdir()
        made.append(Job(base, name))
        return made[-1]

    yield make
    for job in made:
        job.kill()


def storage_config(path: Path, url: str, options: dict[str, object], timeout: str = "20s") -> Path:
    """Write a config file whose ``[storage]`` table points at ``url``."""
    lines = [f'[storage]\nremote = "{url}"\nupload_timeout = "{timeout}"\n[storage.options]']
    for key, value in options.items():
        lines.append(f"{key} = {_toml(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def fake(job: Job, *flags: str) -> list[str]:
    """The command of the fake trainer (tests/fakes/trainer.py) recording into ``job.record``."""
    return [sys.executable, str(FAKES / "trainer.py"), "--record", str(job.record), *flags]
