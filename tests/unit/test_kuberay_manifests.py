"""cluster/kuberay/*.yaml use only KubeRay v1 field names, at the right places, and describe what
the docs promise: a CPU head, one Ray worker per GPU with NCCL settings, token auth, nothing
exposed outside the Kubernetes cluster, the Serve config of serve_apps/ranking.yaml embedded.

The CRD cannot be downloaded here, so the field names freshrank relies on are encoded below from
the json tags of ray-project/kuberay ray-operator/apis/ray/v1 (raycluster_types.go,
rayjob_types.go, rayservice_types.go; authOptions since KubeRay v1.5.1) and of the Kubernetes
core/v1 types the pod templates embed. Fields that would weaken isolation (hostNetwork,
hostPort, hostPath) are left out on purpose, so using one fails here too."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "cluster" / "kuberay"

S = "scalar"
"""A scalar value (string, number, bool, null)."""
MAP = "map"
"""A mapping with free keys (map[string]string, ResourceList, ...)."""

# --- Kubernetes core/v1 (the parts pod templates use) -------------------------------------------
OBJECT_META = {"name": S, "namespace": S, "labels": MAP, "annotations": MAP}
KEY_SELECTOR = {"name": S, "key": S, "optional": S}
ENV_VAR = {
    "name": S,
    "value": S,
    "valueFrom": {
        "secretKeyRef": KEY_SELECTOR,
        "configMapKeyRef": KEY_SELECTOR,
        "fieldRef": {"fieldPath": S, "apiVersion": S},
    },
}
CONTAINER = {
    "name": S,
    "image": S,
    "imagePullPolicy": S,
    "command": [S],
    "args": [S],
    "workingDir": S,
    "env": [ENV_VAR],
    "ports": [{"name": S, "containerPort": S, "protocol": S}],
    "resources": {"limits": MAP, "requests": MAP},
    "volumeMounts": [{"name": S, "mountPath": S, "readOnly": S, "subPath": S}],
    "lifecycle": {"preStop": {"exec": {"command": [S]}}},
    "securityContext": MAP,
}
VOLUME = {
    "name": S,
    "emptyDir": {"medium": S, "sizeLimit": S},
    "persistentVolumeClaim": {"claimName": S, "readOnly": S},
    "configMap": {"name": S, "items": [{"key": S, "path": S}]},
    "secret": {"secretName": S, "items": [{"key": S, "path": S}]},
}
POD_TEMPLATE = {
    "metadata": OBJECT_META,
    "spec": {
        "containers": [CONTAINER],
        "initContainers": [CONTAINER],
        "volumes": [VOLUME],
        "nodeSelector": MAP,
        "tolerations": [{"key": S, "operator": S, "value": S, "effect": S, "tolerationSeconds": S}],
        "affinity": MAP,
        "serviceAccountName": S,
        "priorityClassName": S,
        "imagePullSecrets": [{"name": S}],
        "securityContext": MAP,
    },
}

# --- KubeRay ray.io/v1 ----------------------------------------------------------------------------
HEAD_GROUP_SPEC = {
    "template": POD_TEMPLATE,
    "headService": MAP,
    "enableIngress": S,
    "rayStartParams": MAP,
    "serviceType": S,
}
WORKER_GROUP_SPEC = {
    "suspend": S,
    "groupName": S,
    "replicas": S,
    "minReplicas": S,
    "maxReplicas": S,
    "idleTimeoutSeconds": S,
    "rayStartParams": MAP,
    "template": POD_TEMPLATE,
    "scaleStrategy": {"workersToDelete": [S]},
    "numOfHosts": S,
}
RAY_CLUSTER_SPEC = {
    "suspend": S,
    "managedBy": S,
    "autoscalerOptions": MAP,
    "headServiceAnnotations": MAP,
    "enableInTreeAutoscaling": S,
    "gcsFaultToleranceOptions": MAP,
    "headGroupSpec": HEAD_GROUP_SPEC,
    "rayVersion": S,
    "workerGroupSpecs": [WORKER_GROUP_SPEC],
    "authOptions": {"mode": S},
}
RAY_JOB_SPEC = {
    "activeDeadlineSeconds": S,
    "backoffLimit": S,
    "rayClusterSpec": RAY_CLUSTER_SPEC,
    "submitterPodTemplate": POD_TEMPLATE,
    "metadata": MAP,
    "clusterSelector": MAP,
    "submitterConfig": {"backoffLimit": S},
    "managedBy": S,
    "deletionPolicy": S,
    "entrypoint": S,
    "runtimeEnvYAML": S,
    "jobId": S,
    "submissionMode": S,
    "entrypointResources": S,
    "entrypointNumCpus": S,
    "entrypointNumGpus": S,
    "ttlSecondsAfterFinished": S,
    "shutdownAfterJobFinishes": S,
    "suspend": S,
}
RAY_SERVICE_SPEC = {
    "serveConfigV2": S,
    "rayClusterConfig": RAY_CLUSTER_SPEC,
    "serviceUnhealthySecondThreshold": S,
    "deploymentUnhealthySecondThreshold": S,
    "serveService": MAP,
}


def _resource(kind_spec: dict) -> dict:
    return {"apiVersion": S, "kind": S, "metadata": OBJECT_META, "spec": kind_spec}


SCHEMAS = {
    "RayCluster": _resource(RAY_CLUSTER_SPEC),
    "RayJob": _resource(RAY_JOB_SPEC),
    "RayService": _resource(RAY_SERVICE_SPEC),
}
FILES = {"raycluster.yaml": "RayCluster", "rayjob.yaml": "RayJob", "rayservice.yaml": "RayService"}


def unknown_fields(value: Any, schema: Any, path: str = "") -> list[str]:
    """Paths in ``value`` that ``schema`` does not allow (unknown keys, wrong shapes)."""
    if schema == S:
        return [] if not isinstance(value, (dict, list)) else [f"{path}: expected a scalar"]
    if schema == MAP:
        return [] if isinstance(value, dict) else [f"{path}: expected a mapping"]
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [
            e
            for i, item in enumerate(value)
            for e in unknown_fields(item, schema[0], f"{path}[{i}]")
        ]
    if not isinstance(value, dict):
        return [f"{path}: expected a mapping"]
    out = []
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        if key not in schema:
            out.append(f"{where}: not a field here")
        else:
            out += unknown_fields(item, schema[key], where)
    return out


def _load(name: str) -> dict:
    return yaml.safe_load((KUBERAY / name).read_text())


def _cluster_spec(doc: dict) -> dict:
    return {
        "RayCluster": lambda d: d["spec"],
        "RayJob": lambda d: d["spec"]["rayClusterSpec"],
        "RayService": lambda d: d["spec"]["rayClusterConfig"],
    }[doc["kind"]](doc)


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_key_is_a_kuberay_field_at_its_path(name):
    doc = _load(name)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == FILES[name]
    assert unknown_fields(doc, SCHEMAS[doc["kind"]]) == []


def test_the_check_catches_misplaced_and_misspelt_fields():
    doc = _load("raycluster.yaml")
    bad = copy.deepcopy(doc)
    bad["spec"]["workerGroupSpecs"][0]["minReplica"] = 1
    bad["spec"]["headGroupSpec"]["template"]["spec"]["hostNetwork"] = True
    bad["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["ports"] = [
        {"containerPort": 8000, "hostPort": 8000}
    ]
    bad["spec"]["rayClusterSpec"] = {}  # a RayJob field in a RayCluster
    assert sorted(unknown_fields(bad, SCHEMAS["RayCluster"])) == [
        "spec.headGroupSpec.template.spec.hostNetwork: not a field here",
        "spec.rayClusterSpec: not a field here",
        "spec.workerGroupSpecs[0].minReplica: not a field here",
        "spec.workerGroupSpecs[0].template.spec.containers[0].ports[0].hostPort: not a field here",
    ]


def test_one_cluster_shape_everywhere():
    """RayJob and RayService embed exactly the RayCluster's spec (no drift between them)."""
    specs = [_cluster_spec(_load(name)) for name in sorted(FILES)]
    assert specs[0] == specs[1] == specs[2]


@pytest.mark.parametrize("name", sorted(FILES))
def test_ray_start_params_are_ray_start_options(name):
    from ray.scripts.scripts import start

    options = {opt.removeprefix("--") for p in start.params for opt in p.opts}
    spec = _cluster_spec(_load(name))
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        for key, value in group["rayStartParams"].items():
            assert key in options, f"{key} is not a `ray start` option"
            assert isinstance(value, str), f"rayStartParams.{key} must be a string for KubeRay"


def test_cpu_head_and_one_ray_worker_per_gpu():
    import ray

    spec = _cluster_spec(_load("raycluster.yaml"))
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]
    (head_container,) = head["template"]["spec"]["containers"]
    for part in ("requests", "limits"):
        assert "nvidia.com/gpu" not in head_container["resources"][part]
    assert head["rayStartParams"]["num-gpus"] == "0"

    (gpu,) = spec["workerGroupSpecs"]
    (worker,) = gpu["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert gpu["rayStartParams"]["num-gpus"] == "1"
    assert gpu["replicas"] == gpu["minReplicas"] == gpu["maxReplicas"] >= 1
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["NCCL_SOCKET_IFNAME"] and env["NCCL_DEBUG"]
    assert env["RAY_DATA_USE_DATASOURCE_V2"] == "0"
    volumes = {v["name"]: v for v in gpu["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    tolerations = gpu["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


@pytest.mark.parametrize("name", sorted(FILES))
def test_token_auth_and_nothing_exposed_outside_the_cluster(name):
    text = (KUBERAY / name).read_text()
    spec = _cluster_spec(_load(name))
    assert spec["authOptions"] == {"mode": "token"}
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert not spec["headGroupSpec"].get("enableIngress", False)
    for forbidden in ("LoadBalancer", "NodePort", "hostNetwork", "hostPort", "hostPath"):
        assert forbidden not in text


def test_rayjob_runs_the_trainer_one_rank_per_gpu():
    from ray.runtime_env import RuntimeEnv

    from freshrank.apps.cli import build_parser

    doc = _load("rayjob.yaml")
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[:2] == ["python", "/home/ray/freshrank/jobs/train.py"]
    args = build_parser().parse_args(["train", *argv[2:]])
    (gpu,) = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert args.use_gpu is True
    assert args.num_workers == gpu["replicas"] * int(gpu["rayStartParams"]["num-gpus"])
    runtime_env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    assert set(runtime_env) <= set(RuntimeEnv.known_fields)
    assert int(runtime_env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"]) >= 30


def test_rayservice_embeds_the_ranking_serve_config():
    from ray.serve.schema import ServeDeploySchema
    from test_serve_config import _unknown_keys

    doc = _load("rayservice.yaml")
    embedded = yaml.safe_load(doc["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    assert _unknown_keys(ServeDeploySchema, embedded) == []

    # The only differences from serve_apps/ranking.yaml are the documented ones.
    expected = yaml.safe_load((ROOT / "serve_apps" / "ranking.yaml").read_text())
    expected["http_options"]["host"] = "0.0.0.0"
    (app,) = expected["applications"]
    app["args"]["registry"] = "/data/registry"
    app["runtime_env"] = {"working_dir": "local:///home/ray/freshrank"}
    assert embedded == expected
