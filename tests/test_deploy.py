"""deploy/kubernetes: every manifest against Kubernetes' published schemas, the settings they share with
cog.yaml, and their probes and metrics run against the real Cog server on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from http_helpers import ROOT, CogServer, free_port, request

MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))


def _documents() -> list[tuple[str, dict]]:
    return [(path.name, doc) for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kind(kind: str) -> dict:
    return next(doc for _, doc in _documents() if doc["kind"] == kind)


def _container() -> dict:
    return _kind("Deployment")["spec"]["template"]["spec"]["containers"][0]


def _env() -> dict:
    return {e["name"]: e["value"] for e in _container()["env"]}


def _cog() -> dict:
    return yaml.safe_load((ROOT / "cog.yaml").read_text())


@pytest.mark.parametrize("version", ["1.30.0", kubernetes_validate.latest_version()])
def test_every_manifest_validates_against_the_kubernetes_schemas(version):
    kinds = set()
    for name, doc in _documents():
        kubernetes_validate.validate(doc, version, strict=True)  # raises on an unknown field or a bad value
        kinds.add(doc["kind"])
    assert {"Deployment", "Service", "NetworkPolicy", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "PersistentVolumeClaim", "Job", "ConfigMap"} <= kinds


def test_a_broken_manifest_is_rejected():
    deployment = _kind("Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}  # a misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_the_manifests_agree_with_cog_yaml_and_each_other():
    cog, env, container = _cog(), _env(), _container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert int(env["COG_MAX_CONCURRENCY"]) == cog["concurrency"]["max"]
    # a GPU image and a pod given a GPU serve on it or refuse to start (never on the CPU without a word)
    assert cog["build"]["gpu"] and "MUSICGEN_DEVICE=cuda" in cog["environment"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1" and env["MUSICGEN_DEVICE"] == "cuda"
    target = _kind("HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]
    assert target["metric"]["name"] == "musicgen_requests_in_flight"
    assert int(target["target"]["averageValue"]) == cog["concurrency"]["default_target"] < cog["concurrency"]["max"]
    assert int(env["MUSICGEN_METRICS_PORT"]) == ports["metrics"]
    assert env["MUSICGEN_METRICS_HOST"] == "0.0.0.0"  # Prometheus scrapes the pod's address (127.0.0.1 by default)
    assert ports["http"] == 5000  # where Cog's server listens in the image
    services = {doc["metadata"]["name"]: doc["spec"] for _, doc in _documents() if doc["kind"] == "Service"}
    assert services["musicgen"]["type"] == "ClusterIP"
    assert {p["targetPort"] for p in services["musicgen"]["ports"]} == set(ports)
    assert services["musicgen-pods"]["clusterIP"] == "None"  # headless: each pod, for async predictions
    assert all(spec["selector"] == _kind("Deployment")["spec"]["selector"]["matchLabels"]
               for spec in services.values())
    policy = _kind("NetworkPolicy")["spec"]
    assert sorted(p["port"] for rule in policy["ingress"] for p in rule["ports"]) == sorted(ports.values())
    assert policy["podSelector"] == _kind("Deployment")["spec"]["selector"]


def test_the_server_runs_unprivileged_on_a_read_only_root_with_a_bounded_tmp():
    pod = _kind("Deployment")["spec"]["template"]["spec"]
    container = _container()
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert "/tmp" in writable and all("sizeLimit" in v["emptyDir"] for v in writable.values())
    env = _env()
    assert all(env[k].startswith("/tmp") for k in ("TMPDIR", "HOME", "XDG_CACHE_HOME"))
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # a replica being replaced drains its predictions before SIGTERM, within the grace period
    drain = container["lifecycle"]["preStop"]["exec"]["command"]
    assert drain[-2:][0] == "--timeout" and float(drain[-1]) < pod["terminationGracePeriodSeconds"]
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60  # loading the weights
    assert "/src/weights" not in str(pod) and env["HF_HUB_OFFLINE"] == "1"


def _probe(kind: str, url: str, metrics_port: int | None, state: Path, extra: list[str] | None = None):
    """Run the manifest's own probe command (its `python` is this interpreter) as the kubelet would."""
    probe = {"startup": "startupProbe", "readiness": "readinessProbe", "liveness": "livenessProbe"}.get(kind)
    command = (_container()[probe]["exec"]["command"] if probe else
               _container()["lifecycle"]["preStop"]["exec"]["command"])
    assert command[:3] == ["python", "-m", "musicgen.serving.health"]
    env = {**os.environ, "MUSICGEN_HEALTH_URL": url, "TMPDIR": str(state)}
    if metrics_port:
        env["MUSICGEN_METRICS_PORT"] = str(metrics_port)
    done = subprocess.run([sys.executable, *command[1:], *(extra or [])], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    return done.returncode


def _metric(port: int, name: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_probes_and_metrics_against_the_running_server(checkpoints, tmp_path):
    metrics_port = free_port()
    server = CogServer(checkpoints["plain"], extra_env={"COG_MAX_CONCURRENCY": "1",
                                                        "MUSICGEN_METRICS_PORT": str(metrics_port)})
    try:
        assert server.wait_health()["status"] == "READY"
        for kind in ("startup", "readiness", "liveness"):
            assert _probe(kind, server.url, metrics_port, tmp_path) == 0, kind
        assert _metric(metrics_port, "musicgen_slots") == 1 and _metric(metrics_port, "musicgen_requests_in_flight") == 0
        assert _probe("drain", server.url, metrics_port, tmp_path) == 0  # nothing running: returns at once

        pid = "probe-" + uuid.uuid4().hex[:8]
        status, _ = server.predict({"duration": 120, "seed": 1}, headers={"Prefer": "respond-async"},
                                   prediction_id=pid)
        assert status == 202
        deadline = time.monotonic() + 60
        while request("GET", server.url + "/health-check")[1]["status"] != "BUSY" and time.monotonic() < deadline:
            time.sleep(0.05)
        while _metric(metrics_port, "musicgen_requests_in_flight") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)  # Cog takes the slot a moment before predict() runs
        assert _metric(metrics_port, "musicgen_requests_in_flight") == 1
        assert _probe("readiness", server.url, metrics_port, tmp_path) == 1  # full: out of the Service
        assert _probe("liveness", server.url, metrics_port, tmp_path) == 0  # busy is alive...
        time.sleep(1.5)
        assert _probe("liveness", server.url, metrics_port, tmp_path, ["--max-busy", "1"]) == 1  # ...not forever
        assert _probe("drain", server.url, metrics_port, tmp_path, ["--timeout", "1"]) == 1  # still running

        drained = {}
        waiter = threading.Thread(target=lambda: drained.setdefault(
            "code", _probe("drain", server.url, metrics_port, tmp_path, ["--timeout", "120"])))
        waiter.start()
        time.sleep(1.0)
        assert waiter.is_alive()  # waits for the running prediction
        assert request("POST", f"{server.url}/predictions/{pid}/cancel")[0] == 200
        waiter.join(timeout=120)
        assert drained["code"] == 0
        assert _metric(metrics_port, 'musicgen_requests_total{outcome="canceled"}') == 1
        assert _metric(metrics_port, "musicgen_requests_in_flight") == 0
        deadline = time.monotonic() + 10
        while _probe("readiness", server.url, metrics_port, tmp_path) != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _probe("readiness", server.url, metrics_port, tmp_path) == 0
        assert _probe("liveness", server.url, metrics_port, tmp_path, ["--max-busy", "1"]) == 0  # READY resets
    finally:
        server.stop()
    assert _probe("liveness", server.url, None, tmp_path) == 1  # nothing answers


def test_probes_fail_a_server_whose_setup_failed(tmp_path):
    server = CogServer(tmp_path / "no-weights-here")
    try:
        assert server.wait_health()["status"] == "SETUP_FAILED"
        for kind in ("startup", "readiness", "liveness"):
            assert _probe(kind, server.url, None, tmp_path) == 1, kind
    finally:
        server.stop()
