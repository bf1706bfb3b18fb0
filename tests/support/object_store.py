"""An S3-compatible server for the suite: moto's server mode on 127.0.0.1, one per test session."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.processes import free_port

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "dataferry-test",
    "AWS_SECRET_ACCESS_KEY": "dataferry-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass(frozen=True)
class ObjectStore:
    endpoint_url: str

    def new_bucket_url(self) -> str:
        """A fresh bucket (and prefix) so that tests never see each other's objects."""
        bucket = f"dataferry-{uuid.uuid4().hex[:12]}"
        httpx.put(f"{self.endpoint_url}/{bucket}", timeout=10).raise_for_status()
        return f"s3://{bucket}/results"

    def settings_env(self, bucket_url: str) -> dict[str, str]:
        return {
            "DATAFERRY_RESULTS_URL": bucket_url,
            "DATAFERRY_S3_ENDPOINT_URL": self.endpoint_url,
            "DATAFERRY_S3_REGION": "us-east-1",
            **CREDENTIALS,
        }

    def keys(self, bucket_url: str) -> list[str]:
        bucket = bucket_url.split("//", 1)[1].split("/", 1)[0]
        listing = httpx.get(f"{self.endpoint_url}/{bucket}", timeout=10).text
        return [part.split("</Key>")[0] for part in listing.split("<Key>")[1:]]


@contextmanager
def running_object_store(
    extra_env: dict[str, str] | None = None, certificate: tuple[Path, Path] | None = None
) -> Iterator[ObjectStore]:
    """``extra_env`` configures moto (e.g. INITIAL_NO_AUTH_ACTION_COUNT: then it checks
    signatures); with ``certificate`` (cert, key PEM files) it speaks HTTPS only."""
    port = free_port()
    tls = ["-c", str(certificate[0]), "-k", str(certificate[1])] if certificate else []
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port), *tls],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(extra_env or {})},
    )
    url = f"{'https' if certificate else 'http'}://127.0.0.1:{port}"
    verify = ssl.create_default_context(cafile=str(certificate[0])) if certificate else True
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/moto-api/", timeout=1, verify=verify)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the S3 test server did not start") from None
                time.sleep(0.1)
        yield ObjectStore(url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()  # reaped: a Popen dropped while running is an error here
