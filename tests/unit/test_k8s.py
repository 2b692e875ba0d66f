"""The manifests in k8s/: every overlay renders, validates against the Kubernetes schemas
offline, and keeps the invariants a deploy depends on."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT

KUBECTL = str(Path(sys.executable).parent / "kubectl")
K8S_VERSION = "1.37"
RENDERED = {
    "dev": ROOT / "k8s" / "overlays" / "dev",
    "prod": ROOT / "k8s" / "overlays" / "prod",
    "prod-cluster": ROOT / "k8s" / "overlays" / "prod-cluster",
}
GREEN = ROOT / "k8s" / "blue-green" / "green"  # the next build's workers, beside prod's
HPA = ROOT / "k8s" / "autoscaling" / "hpa"  # for clusters without KEDA


def render(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=[*sorted(RENDERED), "prod+green", "prod-cluster+green"])
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    if request.param.endswith("+green"):  # what the cluster holds during a blue-green deploy
        return render(RENDERED[request.param.removesuffix("+green")]) + render(GREEN)
    return render(RENDERED[request.param])


def _of(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def test_every_object_is_valid_for_kubernetes(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        if obj["apiVersion"].startswith("keda.sh/"):  # a CRD: no upstream schema to check
            assert (
                obj["spec"]["scaleTargetRef"]["name"]
                in {d["metadata"]["name"] for d in _of(objects, "Deployment")}
                or len(objects) == 1
            )
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _pods(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (o["metadata"]["name"], o["spec"]["template"]["spec"])
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet")
    ]


def test_nothing_runs_as_root_and_no_image_floats(objects: list[dict[str, Any]]) -> None:
    for name, pod in _pods(objects):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, name
            image = c["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image


def test_every_deployment_has_a_disruption_budget(objects: list[dict[str, Any]]) -> None:
    budgets = [p["spec"]["selector"]["matchLabels"] for p in _of(objects, "PodDisruptionBudget")]
    for d in _of(objects, "Deployment"):
        assert d["spec"]["selector"]["matchLabels"] in budgets, d["metadata"]["name"]


def _flag(args: list[str], name: str) -> str:
    for n, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name:
            return args[n + 1]
    raise AssertionError(f"{name} missing from {args}")


def test_planes_are_probed_on_the_grpc_health_service(objects: list[dict[str, Any]]) -> None:
    for d in _of(objects, "Deployment"):
        (c,) = d["spec"]["template"]["spec"]["containers"]
        flag = "--listen" if "control-plane" in c["args"] else "--health-listen"
        port = int(_flag(c["args"], flag).rsplit(":", 1)[1])
        for probe in ("readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == port, (d["metadata"]["name"], probe)


def test_workers_get_their_whole_drain_before_sigkill(objects: list[dict[str, Any]]) -> None:
    (config,) = _of(objects, "ConfigMap")
    drain = float(config["data"]["LONGLINE_DRAIN_TIMEOUT"])
    for d in _of(objects, "Deployment"):
        if not d["metadata"]["name"].startswith("longline-worker"):
            continue
        pod = d["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= drain + 10
        stop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        assert "kill -TERM 1" in " ".join(stop)


def test_control_plane_is_reached_through_a_headless_service(
    objects: list[dict[str, Any]],
) -> None:
    for s in _of(objects, "Service"):
        if s["metadata"]["name"] == "longline-control-plane":
            assert s["spec"]["clusterIP"] == "None"


def test_prod_runs_several_control_planes_and_autoscales_workers() -> None:
    prod = render(RENDERED["prod"])
    (cp,) = [
        d for d in _of(prod, "Deployment") if d["metadata"]["name"] == "longline-control-plane"
    ]
    assert cp["spec"]["replicas"] >= 2
    (scaled,) = _of(prod, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "longline-worker"
    assert "longline_queue_depth" in scaled["spec"]["triggers"][0]["metadata"]["query"]
    assert not _of(prod, "StatefulSet")  # a managed Redis, named in LONGLINE_REDIS
    (config,) = _of(prod, "ConfigMap")
    assert config["data"]["LONGLINE_REDIS"].startswith("rediss://")


def test_the_image_is_slim_pinned_and_not_root() -> None:
    dockerfile = (ROOT / "k8s" / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert bases and all(":" in b and "latest" not in b and "slim" in b for b in bases)
    assert re.search(r"^USER 10001", dockerfile, re.M)


def test_each_build_of_workers_is_its_own_deployment_and_says_its_build() -> None:
    workers = [
        d
        for d in _of(render(RENDERED["prod"]) + render(GREEN), "Deployment")
        if d["metadata"]["name"].startswith("longline-worker")
    ]
    assert [d["metadata"]["name"] for d in workers] == ["longline-worker", "longline-worker-green"]
    selectors = [d["spec"]["selector"]["matchLabels"] for d in workers]
    assert selectors[0]["longline.dev/track"] != selectors[1]["longline.dev/track"]
    builds = []
    for d in workers:
        (c,) = d["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        # The build id workers announce is the image they run: promote by image tag.
        assert env["LONGLINE_BUILD_ID"] == c["image"].rsplit(":", 1)[1]
        builds.append(env["LONGLINE_BUILD_ID"])
    assert builds[0] != builds[1]


def test_prod_authenticates_and_only_dev_runs_without_tokens() -> None:
    prod = render(RENDERED["prod"])
    (config,) = _of(prod, "ConfigMap")
    assert "LONGLINE_INSECURE_NO_AUTH" not in config["data"]
    (cp,) = [
        d for d in _of(prod, "Deployment") if d["metadata"]["name"] == "longline-control-plane"
    ]
    pod = cp["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert env["LONGLINE_TOKENS_FILE"] == mounts["tokens"] + "/tokens.toml"
    assert volumes["tokens"] == "longline-tokens"
    secrets = {s["metadata"]["name"]: s for s in _of(prod, "Secret")}
    assert "LONGLINE_TOKEN" in secrets["longline-secrets"]["stringData"]  # the workers' token
    assert "tokens.toml" in secrets["longline-tokens"]["stringData"]
    (dev_config,) = _of(render(RENDERED["dev"]), "ConfigMap")
    assert dev_config["data"]["LONGLINE_INSECURE_NO_AUTH"] == "true"


def test_prod_cluster_reads_a_cluster_url_and_a_fixed_partition_count_from_secrets() -> None:
    objs = render(RENDERED["prod-cluster"])
    (config,) = _of(objs, "ConfigMap")
    # The URL carries the password: it is in the Secret only, never in the ConfigMap.
    assert "LONGLINE_REDIS" not in config["data"]
    assert 1 <= int(config["data"]["LONGLINE_PARTITIONS"]) <= 4096
    secrets = {s["metadata"]["name"]: s for s in _of(objs, "Secret")}
    url = secrets["longline-secrets"]["stringData"]["LONGLINE_REDIS"]
    assert url.startswith(("redis+cluster://", "rediss+cluster://"))
    from longline._store import check_redis_url

    check_redis_url(url)
    assert not _of(objs, "StatefulSet")  # the cluster is the operator's, not deployed here
    for d in _of(objs + render(GREEN), "Deployment"):
        (c,) = d["spec"]["template"]["spec"]["containers"]
        from_env = [
            e["valueFrom"]["secretKeyRef"]
            for e in c.get("env", [])
            if e["name"] == "LONGLINE_REDIS" and "valueFrom" in e
        ]
        from_secret = [s["secretRef"]["name"] for s in c.get("envFrom", []) if "secretRef" in s]
        assert from_env == [{"name": "longline-secrets", "key": "LONGLINE_REDIS"}] or (
            "longline-secrets" in from_secret
        ), d["metadata"]["name"]
