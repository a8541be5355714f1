"""A two-node Ray cluster on this machine, for its own pytest session (`make test` runs it after
the main one: a process joins one Ray cluster). The head node takes the ingress and the router
(resource ``head_node``); the second node, standing in for a GPU node, takes the generators
(resource ``gpu_node``). Each node's processes get their own scratch folder (TMPDIR), so a path
handed from one node to another by accident fails."""

from __future__ import annotations

import os

import pytest

from tests.conftest import free_port


@pytest.fixture(scope="session")
def two_nodes(tiny_weights, tmp_path_factory):
    """The cluster's HTTP base URL; yields once Serve runs on it."""
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from serve_app.body_limit import PROXY_CALLBACK

    os.environ["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] = PROXY_CALLBACK
    scratch = {name: tmp_path_factory.mktemp(f"scratch-{name}") for name in ("head", "gpu")}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "resources": {"head_node": 1},
            "include_dashboard": False,
            "env_vars": {"TMPDIR": str(scratch["head"])},
        },
    )
    cluster.add_node(num_cpus=2, resources={"gpu_node": 4}, env_vars={"TMPDIR": str(scratch["gpu"])})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    port = free_port()
    # One HTTP proxy, on the head: two proxies of one machine would want the same port.
    serve.start(http_options={"host": "127.0.0.1", "port": port, "location": "HeadOnly"})
    yield {"url": f"http://127.0.0.1:{port}", "scratch": scratch}
    serve.shutdown()
    ray.shutdown()
    cluster.shutdown()
