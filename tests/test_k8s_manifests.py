"""The KubeRay manifests in k8s/, checked offline: against the KubeRay v1.7.0 CRD schemas (unknown
fields refused), their Serve config against Ray Serve's schema and the app's arguments and against
what the profiles generate, the resources the deployments ask for against what the pods offer,
and the Dockerfile with hadolint."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from serve_app.app import AppArgs
from serve_app.cluster_manifests import ClusterProfile, read_from, render, serve_config_text, write_into

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
CRDS = Path(__file__).parent / "data" / "kuberay"
PROFILES = sorted((K8S / "profiles").glob("*.yaml"))
RAYSERVICES = sorted(p for p in K8S.glob("rayservice*.yaml"))


def json_schema(openapi: dict) -> dict:
    """A CRD's openAPIV3Schema as JSON Schema, as KubeRay's own checks make it: objects with listed
    properties refuse others (unless marked x-kubernetes-preserve-unknown-fields), and
    x-kubernetes-int-or-string takes either."""
    schema = copy.deepcopy(openapi)

    def walk(node):
        if isinstance(node, dict):
            if node.pop("x-kubernetes-int-or-string", False):
                node.pop("type", None)
                node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
            keep = node.pop("x-kubernetes-preserve-unknown-fields", False)
            if "properties" in node and "additionalProperties" not in node and not keep:
                node["additionalProperties"] = False
            for key in [k for k in node if k.startswith("x-kubernetes-")]:
                del node[key]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def crd_schema(name: str) -> dict:
    crd = yaml.safe_load((CRDS / f"ray.io_{name}.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return json_schema(version["schema"]["openAPIV3Schema"])


@pytest.fixture(scope="module")
def rayservice_schema() -> dict:
    return crd_schema("rayservices")


@pytest.fixture(scope="module")
def raycluster_schema() -> dict:
    return crd_schema("rayclusters")


def test_the_schema_refuses_unknown_fields_and_wrong_types(rayservice_schema):
    """The check can fail: a misspelt field and a string where a number goes are refused."""
    manifest = yaml.safe_load(RAYSERVICES[0].read_text())
    jsonschema.validate(manifest, rayservice_schema)
    typo = copy.deepcopy(manifest)
    typo["spec"]["rayClusterConfig"]["enableInTreeAutoScaling"] = True
    with pytest.raises(jsonschema.ValidationError, match="enableInTreeAutoScaling"):
        jsonschema.validate(typo, rayservice_schema)
    wrong = copy.deepcopy(manifest)
    wrong["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "eight"
    with pytest.raises(jsonschema.ValidationError, match="eight"):
        jsonschema.validate(wrong, rayservice_schema)


@pytest.mark.parametrize("path", RAYSERVICES, ids=lambda p: p.name)
def test_each_rayservice_and_its_raycluster_match_the_kuberay_crds(path, rayservice_schema, raycluster_schema):
    manifest = yaml.safe_load(path.read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    jsonschema.validate(manifest, rayservice_schema)
    cluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": manifest["metadata"]["name"]},
        "spec": manifest["spec"]["rayClusterConfig"],
    }
    jsonschema.validate(cluster, raycluster_schema)
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == __import__("ray").__version__  # the image's Ray is the one tested here
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == 0  # GPU nodes only while generators need them
        pod = group["template"]["spec"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert claims == ["wan-serve-models"]


@pytest.mark.parametrize("profile_path", PROFILES, ids=lambda p: p.name)
def test_serve_config_v2_is_what_its_profile_generates_and_every_variant_has_a_config(profile_path):
    profile, base = ClusterProfile.load(profile_path)
    manifest_path = (base / profile.manifest).resolve()
    assert manifest_path in RAYSERVICES
    text = manifest_path.read_text()
    config = render(profile, base)  # Ray Serve's ServeDeploySchema, AppArgs, a config file per variant
    assert read_from(text) == serve_config_text(config), f"out of date: run wan-serve k8s-render {profile_path}"
    assert write_into(text, serve_config_text(config)) == text
    embedded = yaml.safe_load(read_from(text))
    assert embedded["proxy_location"] == "EveryNode" and embedded["http_options"]["host"] == "0.0.0.0"
    (app,) = embedded["applications"]
    assert app["logging_config"] == {"encoding": "JSON"}
    args = AppArgs.model_validate(app["args"])
    assert all(not name.endswith("-tiny") for name in args.variants)  # the real variants, not the twins
    # What the deployments ask for, the pods offer: the ingress and router on the head, generators on GPU pods.
    cluster = yaml.safe_load(text)["spec"]["rayClusterConfig"]
    head = json.loads(json.loads(cluster["headGroupSpec"]["rayStartParams"]["resources"]))
    workers = [json.loads(json.loads(g["rayStartParams"]["resources"])) for g in cluster["workerGroupSpecs"]]
    assert set(args.control_resources) <= set(head)
    for name in args.variants:
        wanted = args.overrides[name]["deployment"]["resources"]
        assert any(set(wanted) <= set(offered) for offered in workers), name


def test_write_into_replaces_only_the_serve_config_block():
    manifest = "kind: RayService\nspec:\n  # kept\n  serveConfigV2: |\n    old: 1\n\n    more: 2\n  rayClusterConfig:\n    a: 1\n"
    new = write_into(manifest, "applications: []\nproxy_location: EveryNode\n")
    assert new == (
        "kind: RayService\nspec:\n  # kept\n  serveConfigV2: |\n    applications: []\n    proxy_location: EveryNode\n"
        "  rayClusterConfig:\n    a: 1\n"
    )
    assert read_from(new) == "applications: []\nproxy_location: EveryNode\n"
    with pytest.raises(ValueError, match="serveConfigV2"):
        write_into("kind: RayService\n", "x: 1\n")


def test_the_other_manifests_agree_with_the_rayservices():
    docs = {p.name: list(yaml.safe_load_all(p.read_text())) for p in K8S.glob("*.yaml")}
    (secret,) = docs["secrets.example.yaml"]
    (monitor,) = docs["podmonitor.yaml"]
    claim, job = docs["model-store.yaml"]
    assert secret["kind"] == "Secret" and claim["kind"] == "PersistentVolumeClaim" and job["kind"] == "Job"
    assert claim["metadata"]["name"] == "wan-serve-models" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for path in RAYSERVICES:
        cluster = yaml.safe_load(path.read_text())["spec"]["rayClusterConfig"]
        pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
        for pod in pods:
            labels = pod["metadata"]["labels"]
            assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
            (container,) = pod["spec"]["containers"]
            ports = {p["name"] for p in container["ports"]}
            assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports
            for env in container["env"]:
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    assert ref["name"] == "wan-serve" and ref["key"] in secret["stringData"], ref
    credentials = [
        e["authorization"]["credentials"] for e in monitor["spec"]["podMetricsEndpoints"] if "authorization" in e
    ]
    assert all(c["key"] in secret["stringData"] for c in credentials) and credentials


def test_the_dockerfile_passes_hadolint(tmp_path):
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    ok = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout == "", ok.stdout
    assert "FROM rayproject/ray:" + __import__("ray").__version__ + "-py311-gpu" in (ROOT / "Dockerfile").read_text()
    # The linter can fail: an unpinned pip install is flagged.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM rayproject/ray:2.60.0-py311-gpu\nRUN pip install torch\n")
    flagged = subprocess.run([hadolint, str(bad)], capture_output=True, text=True)
    assert flagged.returncode == 1 and "DL3013" in flagged.stdout
