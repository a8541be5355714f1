"""A local Ray cluster with Serve's HTTP proxy on a free port of 127.0.0.1, for the bench scripts
(run as ``python bench/<script>.py``, which puts this folder on ``sys.path``)."""

from __future__ import annotations

import socket

import ray
from ray import serve


def start_local_serve() -> int:
    """Start a Ray cluster of this process's own (``address="local"``, no dashboard) and Serve's
    proxy on 127.0.0.1; returns the proxy's port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port
