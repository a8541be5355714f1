"""A real S3-compatible server for the tests: moto's server mode (its own HTTP server speaking the
S3 API) on 127.0.0.1. The standard AWS variables point every process at it: they are set when the
test session starts, before Ray's workers (which inherit them) exist."""

from __future__ import annotations

import os
import uuid

import httpx

#: Credentials moto accepts (it checks signatures, not secrets).
TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true"}


def configure(port: int) -> None:
    """Point the AWS variables of this process (and its children) at a server on ``port``."""
    os.environ.update(TEST_ENV, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")


class S3Server:
    """moto's server on 127.0.0.1:``port``; ``new_bucket()`` makes an empty bucket."""

    def __init__(self, port: int) -> None:
        from moto.server import ThreadedMotoServer

        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)

    def start(self) -> S3Server:
        self._server.start()
        return self

    def new_bucket(self) -> str:
        """An empty bucket's name (moto accepts the unsigned CreateBucket)."""
        name = "t-" + uuid.uuid4().hex[:12]
        httpx.put(f"{self.endpoint}/{name}", timeout=10).raise_for_status()
        return name

    def stop(self) -> None:
        self._server.stop()
