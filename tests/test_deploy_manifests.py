"""deploy/: the cluster-launcher config, the Kubernetes manifests and the Dockerfile agree.

The launcher config is checked against the JSON schema inside the installed ``ray``; the
KubeRay objects against the fields of KubeRay's v1 API types (ray-operator/apis/ray/v1,
release 1.7), so a field KubeRay does not have (a ``concurrencyPolicy`` on a RayCronJob, say)
fails here rather than being dropped silently by the API server.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from sslpipe.pipelines.cli import build_parser
from sslpipe.pipelines.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
MANIFESTS = sorted((DEPLOY / "kuberay").glob("*.yaml"))
DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
LAUNCHER = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())

# Spec fields of KubeRay's v1 types (json tags), for the objects deploy/kuberay uses.
RAYJOB_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate",
    "metadata", "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy",
    "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources",
    "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
    "preRunningDeadlineSeconds", "shutdownAfterJobFinishes", "suspend",
}  # fmt: skip
RAYCRONJOB_FIELDS = {"jobTemplate", "schedule", "timeZone", "suspend"}
RAYCLUSTER_FIELDS = {
    "upgradeStrategy", "authOptions", "suspend", "managedBy", "autoscalerOptions",
    "headServiceAnnotations", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
    "historyServerOptions", "networkPolicy", "tlsOptions", "headGroupSpec", "rayVersion",
    "workerGroupSpecs",
}  # fmt: skip
HEAD_GROUP_FIELDS = {
    "template", "headService", "enableIngress", "ingressOptions", "resources", "labels",
    "rayStartParams", "serviceType",
}  # fmt: skip
WORKER_GROUP_FIELDS = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
    "priority", "resources", "labels", "rayStartParams", "template", "scaleStrategy",
    "numOfHosts",
}  # fmt: skip
# Required fields per kind (KubeRay CRDs' and Kubernetes' own `required` lists).
REQUIRED = {
    "RayCluster": ["spec.headGroupSpec.rayStartParams", "spec.headGroupSpec.template"],
    "RayJob": ["spec.entrypoint"],
    "RayCronJob": ["spec.schedule", "spec.jobTemplate", "spec.jobTemplate.entrypoint"],
    "CronJob": ["spec.schedule", "spec.jobTemplate.spec.template.spec.containers"],
    "ConfigMap": ["data"],
    "PersistentVolumeClaim": ["spec.accessModes", "spec.resources.requests.storage"],
    "ServiceAccount": [],
    "Role": ["rules"],
    "RoleBinding": ["subjects", "roleRef.kind", "roleRef.name", "roleRef.apiGroup"],
}
API_VERSIONS = {
    "RayCluster": "ray.io/v1",
    "RayJob": "ray.io/v1",
    "RayCronJob": "ray.io/v1",
    "CronJob": "batch/v1",
    "ConfigMap": "v1",
    "PersistentVolumeClaim": "v1",
    "ServiceAccount": "v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
}


def _documents() -> list[tuple[str, dict[str, Any]]]:
    """Every object in deploy/kuberay, plus RayJobs embedded in ConfigMaps as templates."""
    found = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            found.append((path.name, doc))
            if doc["kind"] == "ConfigMap":
                templates = [(k, t) for k, t in doc["data"].items() if k.endswith(".yaml")]
                found += [(f"{path.name}:{k}", yaml.safe_load(t)) for k, t in templates]
    return found


DOCUMENTS = _documents()


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in DOCUMENTS if doc["kind"] == kind]


def _the(kind: str) -> dict[str, Any]:
    (doc,) = _of_kind(kind)
    return doc


def _at(doc: dict[str, Any], dotted: str) -> Any:
    value: Any = doc
    for key in dotted.split("."):
        assert isinstance(value, dict) and key in value, f"missing {dotted}"
        value = value[key]
    return value


def _job_specs() -> Iterator[dict[str, Any]]:
    """Every RayJob spec: RayJobs (files and templates) and RayCronJobs' job templates."""
    yield from (doc["spec"] for doc in _of_kind("RayJob"))
    yield from (doc["spec"]["jobTemplate"] for doc in _of_kind("RayCronJob"))


def _ray_pod_specs() -> Iterator[dict[str, Any]]:
    cluster = _the("RayCluster")["spec"]
    yield cluster["headGroupSpec"]["template"]["spec"]
    yield from (group["template"]["spec"] for group in cluster["workerGroupSpecs"])


def _pod_specs() -> Iterator[dict[str, Any]]:
    yield from _ray_pod_specs()
    yield from (
        job["spec"]["jobTemplate"]["spec"]["template"]["spec"] for job in _of_kind("CronJob")
    )


def _dockerfile(instruction: str) -> list[str]:
    return re.findall(rf"^{instruction}\s+(.+)$", DOCKERFILE, flags=re.MULTILINE)


def test_launcher_config_validates_against_rays_schema() -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler/ray-schema.json").read_text())
    jsonschema.validate(LAUNCHER, schema)
    assert LAUNCHER["head_node_type"] in LAUNCHER["available_node_types"]


@pytest.mark.parametrize(("where", "doc"), DOCUMENTS, ids=[w for w, _ in DOCUMENTS])
def test_manifest_has_the_required_fields_of_its_kind(where: str, doc: dict[str, Any]) -> None:
    kind = doc.get("kind")
    assert kind in REQUIRED, f"{where}: unexpected kind {kind}"
    assert doc.get("apiVersion") == API_VERSIONS[kind]
    meta = doc.get("metadata") or {}
    assert meta.get("name") or meta.get("generateName")
    for dotted in REQUIRED[kind]:
        _at(doc, dotted)


def test_kuberay_objects_use_only_fields_kuberay_has() -> None:
    for spec in _job_specs():
        assert set(spec) <= RAYJOB_FIELDS, set(spec) - RAYJOB_FIELDS
    for cron in _of_kind("RayCronJob"):
        assert set(cron["spec"]) <= RAYCRONJOB_FIELDS, set(cron["spec"]) - RAYCRONJOB_FIELDS
    cluster = _the("RayCluster")["spec"]
    assert set(cluster) <= RAYCLUSTER_FIELDS
    assert set(cluster["headGroupSpec"]) <= HEAD_GROUP_FIELDS
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP_FIELDS
        assert {"groupName", "template"} <= set(group)


def test_cluster_has_a_gpu_group_shared_memory_and_a_shared_volume() -> None:
    cluster = _the("RayCluster")["spec"]
    claim = _the("PersistentVolumeClaim")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    gpus = [
        container["resources"]["limits"].get("nvidia.com/gpu")
        for group in cluster["workerGroupSpecs"]
        for container in group["template"]["spec"]["containers"]
    ]
    assert any(gpus)
    for pod in _ray_pod_specs():
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
            shared = volumes[mounts["/mnt/shared"]]["persistentVolumeClaim"]
            assert shared["claimName"] == claim["metadata"]["name"]


def _memory_gb(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Gi|Ti)", quantity).groups()
    return int(number) * {"Gi": 2**30, "Ti": 2**40}[unit] / 1e9


def test_object_store_fits_in_shared_memory() -> None:
    for group in _the("RayCluster")["spec"]["workerGroupSpecs"]:
        store = int(group["rayStartParams"]["object-store-memory"]) / 1e9
        pod = group["template"]["spec"]
        shm = next(v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory")
        assert store < _memory_gb(shm["emptyDir"]["sizeLimit"])


def test_every_job_runs_a_spec_of_this_repo_that_validates(monkeypatch) -> None:
    head = _the("RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    for variable in head["env"]:  # the specs' ${SSLPIPE_…} paths, as on the cluster
        monkeypatch.setenv(variable["name"], variable["value"])
    specs = set()
    for job in _job_specs():
        words = shlex.split(job["entrypoint"])
        assert words[:2] == ["sslpipe", "run"], job["entrypoint"]
        args = build_parser().parse_args(words[1:])  # the real CLI accepts it
        assert (REPO / args.spec).is_file(), args.spec
        load_spec(REPO / args.spec, args.overrides)
        specs.add(args.spec)
    assert specs == {
        "pipelines/examples/imagenet_vicreg_resnet50.yaml",
        "pipelines/examples/retrain_nightly.yaml",
    }


def test_both_nightly_schedules_run_the_same_job() -> None:
    cron, plain = _the("RayCronJob"), _the("CronJob")
    assert plain["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["schedule"] == plain["spec"]["schedule"]
    assert len(cron["spec"]["schedule"].split()) == 5
    (template,) = [doc["spec"] for where, doc in DOCUMENTS if ".yaml:" in where]
    assert template == cron["spec"]["jobTemplate"]
    assert template["entrypoint"].endswith("retrain_nightly.yaml --if-changed")
    deadline = plain["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]
    assert template["activeDeadlineSeconds"] < deadline < 24 * 3600


def test_jobs_select_the_cluster_and_the_cronjob_its_objects() -> None:
    name = _the("RayCluster")["metadata"]["name"]
    for job in _job_specs():
        assert job["clusterSelector"] == {"ray.io/cluster": name}
        assert "rayClusterSpec" not in job and not job.get("shutdownAfterJobFinishes")
    pod = _the("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == _the("ServiceAccount")["metadata"]["name"]
    assert _the("RoleBinding")["roleRef"]["name"] == _the("Role")["metadata"]["name"]
    config_map = _the("ConfigMap")
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    (container,) = pod["containers"]
    (mount,) = container["volumeMounts"]
    script = Path(container["command"][-1])
    assert script.parent == Path(mount["mountPath"]) and script.name in config_map["data"]
    assert Path(mount["mountPath"], "rayjob.yaml").as_posix() in config_map["data"]["run.sh"]


def test_image_and_versions_agree_across_dockerfile_manifests_and_launcher() -> None:
    images = {c["image"] for pod in _pod_specs() for c in pod["containers"]}
    images.add(LAUNCHER["docker"]["image"])
    (image,) = images
    assert image.endswith(f"/sslpipe:{metadata.version('sslpipe')}")
    assert f"docker build -f deploy/Dockerfile -t {image} ." in DOCKERFILE
    assert f"-t {image}" in (DEPLOY / "README.md").read_text()
    (ray_version,) = re.findall(r"^ARG RAY_VERSION=(\S+)$", DOCKERFILE, flags=re.MULTILINE)
    assert _the("RayCluster")["spec"]["rayVersion"] == ray_version


def test_image_runs_the_entrypoints_from_its_workdir() -> None:
    (workdir,) = _dockerfile("WORKDIR")
    assert "COPY pipelines ./pipelines" in DOCKERFILE  # pipelines/examples/… resolve from it
    for pod in _pod_specs():
        for container in pod["containers"]:
            assert container.get("workingDir", workdir) == workdir
    scripts = metadata.entry_points(group="console_scripts")
    assert "sslpipe" in scripts.names  # the command every entrypoint starts with
    assert any(r.startswith("nvidia-dali-cuda130") for r in metadata.requires("sslpipe") or [])
    assert "ray[default,train]==${RAY_VERSION}" in DOCKERFILE


def test_image_is_cuda_runtime_and_runs_as_a_user() -> None:
    (base,) = _dockerfile("FROM")
    assert base.startswith("nvidia/cuda:") and "-runtime-" in base
    users = _dockerfile("USER")
    assert users and users[-1] not in ("root", "0")
