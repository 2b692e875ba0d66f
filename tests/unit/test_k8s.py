"""The manifests in k8s/: every overlay renders, validates against the Kubernetes schemas
offline, and keeps the invariants a deploy depends on."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from longline.control_plane import ControlPlaneSettings
from longline.control_plane._workers import GIVE_BACK_WAIT
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
HTTP_INGRESS = ROOT / "k8s" / "components" / "http-ingress"  # opt-in, added to an overlay
KUSTOMIZATIONS = sorted(p.parent for p in (ROOT / "k8s").rglob("kustomization.yaml"))
# The control plane's defaults, from the one place they are written.
DEFAULTS = {f.name: f.default for f in dataclasses.fields(ControlPlaneSettings)}


def render(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def render_with(overlay: Path, component: Path, tmp: Path) -> list[dict[str, Any]]:
    """`overlay` with `component` added to its components, as an operator adds one to a copy
    of it (so the overlay's namespace reaches what the component adds)."""
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    assert all("path" not in patch for patch in kustomization.get("patches", []))  # inline only
    for key in ("resources", "components"):
        kustomization[key] = [os.path.relpath(overlay / p, tmp) for p in kustomization.get(key, [])]
    kustomization["components"].append(os.path.relpath(component, tmp))
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return render(tmp)


@pytest.fixture(
    scope="module",
    params=[*sorted(RENDERED), "prod+green", "prod-cluster+green", "prod+http-ingress"],
)
def objects(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    if request.param.endswith("+green"):  # what the cluster holds during a blue-green deploy
        return render(RENDERED[request.param.removesuffix("+green")]) + render(GREEN)
    if request.param.endswith("+http-ingress"):
        return render_with(
            RENDERED[request.param.removesuffix("+http-ingress")],
            HTTP_INGRESS,
            tmp_path_factory.mktemp("http-ingress"),
        )
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


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(ROOT / "k8s")))
def test_every_kustomization_builds_alone_into_valid_objects(path: Path) -> None:
    for obj in render(path):  # components too: each builds alone as well as in an overlay
        if not obj["apiVersion"].startswith("keda.sh/"):
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
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert env["LONGLINE_TOKENS_FILE"] == mounts["tokens"] + "/tokens.toml"
    assert volumes["tokens"] == "longline-tokens"
    secrets = {s["metadata"]["name"]: s for s in _of(prod, "Secret")}
    assert "LONGLINE_TOKEN" in secrets["longline-secrets"]["stringData"]  # the workers' token
    assert "tokens.toml" in secrets["longline-tokens"]["stringData"]
    (dev_config,) = _of(render(RENDERED["dev"]), "ConfigMap")
    assert dev_config["data"]["LONGLINE_INSECURE_NO_AUTH"] == "true"
    _, dev_cp = _control_plane(render(RENDERED["dev"]))
    assert "LONGLINE_TOKENS_FILE" not in {e["name"] for e in dev_cp["env"]}


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


# --- the HTTP face ------------------------------------------------------------------------

NGINX = "nginx.ingress.kubernetes.io/"


def _control_plane(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    (d,) = [
        o for o in _of(objects, "Deployment") if o["metadata"]["name"] == "longline-control-plane"
    ]
    (c,) = d["spec"]["template"]["spec"]["containers"]
    return d, c


def _setting(objects: list[dict[str, Any]], container: dict[str, Any], field: str) -> str:
    """A control-plane setting as the pod gets it: its flag, else its variable (the
    container's own before the ConfigMap's), else the default."""
    name = field.replace("_", "-")
    if any(a == f"--{name}" or a.startswith(f"--{name}=") for a in container["args"]):
        return _flag(container["args"], f"--{name}")
    variable = "LONGLINE_" + field.upper()
    for e in container.get("env", []):
        if e["name"] == variable:
            assert "value" in e, f"{variable} is no plain value"
            return str(e["value"])
    (config,) = _of(objects, "ConfigMap")
    return str(config["data"].get(variable, DEFAULTS[field]))


def _nginx_size(size: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", size)
    assert match, size
    return int(match[1]) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match[2].lower()]


def test_control_plane_serves_http_on_the_port_its_service_names(
    objects: list[dict[str, Any]],
) -> None:
    _, c = _control_plane(objects)
    host, _, port = _setting(objects, c, "http_listen").rpartition(":")
    assert port, "the control plane serves no HTTP"
    assert host in ("0.0.0.0", "[::]", ""), host  # reachable from outside the pod
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == int(port)
    (service,) = [
        s for s in _of(objects, "Service") if s["metadata"]["name"] == "longline-control-plane"
    ]
    exposed = {p["name"]: p for p in service["spec"]["ports"]}
    assert {"grpc", "http"} <= exposed.keys()
    assert exposed["http"]["targetPort"] in ("http", int(port))
    assert exposed["http"]["port"] == 8080


def test_run_token_secret_is_an_optional_key_of_the_tokens_secret(
    objects: list[dict[str, Any]],
) -> None:
    _, c = _control_plane(objects)
    (ref,) = [
        e["valueFrom"]["secretKeyRef"] for e in c["env"] if e["name"] == "LONGLINE_RUN_TOKEN_SECRET"
    ]
    assert ref == {"name": "longline-tokens", "key": "run-token-secret", "optional": True}
    secrets = {s["metadata"]["name"]: s for s in _of(objects, "Secret")}
    assert "run-token-secret" in secrets["longline-tokens"]["stringData"]
    (config,) = _of(objects, "ConfigMap")
    assert "LONGLINE_RUN_TOKEN_SECRET" not in config["data"]  # a secret, never in plain sight


def test_control_plane_stops_within_its_grace_period(objects: list[dict[str, Any]]) -> None:
    d, c = _control_plane(objects)
    grace = d["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    # The preStop sleep lets the endpoints (and the Ingress controller) drop the pod first.
    stop = " ".join(c["lifecycle"]["preStop"]["exec"]["command"])
    match = re.fullmatch(r"sleep (\d+)", stop)
    assert match, stop
    shutdown = float(_setting(objects, c, "shutdown_grace"))
    # Then the HTTP face, and then gRPC, each get --shutdown-grace; the ended streams'
    # give-backs up to GIVE_BACK_WAIT; a margin for the rest.
    wait = GIVE_BACK_WAIT
    assert grace >= int(match[1]) + 2 * shutdown + wait + 5, (grace, match[1], shutdown, wait)


def test_the_http_ingress_lets_event_streams_through(tmp_path: Path) -> None:
    objs = render_with(RENDERED["prod"], HTTP_INGRESS, tmp_path)
    (ingress,) = _of(objs, "Ingress")
    notes = ingress["metadata"]["annotations"]
    assert notes[NGINX + "proxy-buffering"] == "off"
    assert int(notes[NGINX + "proxy-read-timeout"]) >= 3600
    assert int(notes[NGINX + "proxy-send-timeout"]) >= 3600
    assert notes[NGINX + "proxy-http-version"] == "1.1"
    assert notes.get(NGINX + "enable-cors", "false") == "false"  # CORS is the control plane's
    _, c = _control_plane(objs)
    # Above the replica's own limit on a body (the largest input plus 64 KiB), so that its
    # JSON error answers a too-large input, and not unlimited.
    limit = int(_setting(objs, c, "max_input_bytes")) + 64 * 1024
    assert limit <= _nginx_size(notes[NGINX + "proxy-body-size"]) <= 4 * limit
    services = {s["metadata"]["name"]: s for s in _of(objs, "Service")}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            service = services[backend["name"]]
            assert service["metadata"]["namespace"] == ingress["metadata"]["namespace"]
            (port,) = [p for p in service["spec"]["ports"] if p["name"] == backend["port"]["name"]]
            assert port["targetPort"] in ("http", ports["http"])


def test_prod_runs_one_control_plane_process_per_core_it_requests() -> None:
    """A Python process uses one core: a pod given two runs two (--processes), each with its
    metrics port declared."""
    prod = render(RENDERED["prod"])
    (cp,) = [
        d for d in _of(prod, "Deployment") if d["metadata"]["name"] == "longline-control-plane"
    ]
    (container,) = cp["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    processes = int(env["LONGLINE_PROCESSES"])
    assert processes == int(container["resources"]["requests"]["cpu"]) == 2
    assert int(container["resources"]["limits"]["cpu"]) >= processes
    ports = {p["containerPort"] for p in container["ports"]}
    assert {9090 + i for i in range(processes)} <= ports
