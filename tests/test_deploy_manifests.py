"""deploy/: the cluster-launcher config, the Kubernetes manifests and the Dockerfile agree.

The launcher config is checked against the JSON schema inside the installed ``ray``; the
KubeRay objects against the fields of KubeRay's v1 API types (ray-operator/apis/ray/v1,
release 1.7), so a field KubeRay does not have (a ``concurrencyPolicy`` on a RayCronJob, say)
fails here rather than being dropped silently by the API server. Every cluster shipped runs
with Ray's token authentication, its token in a Secret or a file, never in a manifest.
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

from sslpipe.pipelines.cli.main import build_parser
from sslpipe.pipelines.spec.pipeline import load_spec

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
MANIFESTS = sorted((DEPLOY / "kuberay").glob("*.yaml"))
DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
LAUNCHER = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
README = (DEPLOY / "README.md").read_text()
EXAMPLES = REPO / "pipelines" / "examples"

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
AUTH_OPTIONS_FIELDS = {"mode", "secretName", "enableK8sTokenAuth"}
AUTOSCALER_OPTIONS_FIELDS = {
    "resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds",
    "upscalingMode", "version", "env", "envFrom", "volumeMounts", "command", "args",
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
    "PriorityClass": ["value"],
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
    "PriorityClass": "scheduling.k8s.io/v1",
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
    assert set(cluster["authOptions"]) <= AUTH_OPTIONS_FIELDS
    assert set(cluster["autoscalerOptions"]) <= AUTOSCALER_OPTIONS_FIELDS
    assert set(cluster["headGroupSpec"]) <= HEAD_GROUP_FIELDS
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP_FIELDS
        assert {"groupName", "template"} <= set(group)


def _env_entries(value: Any) -> Iterator[dict[str, Any]]:
    """Every container ``env`` entry anywhere in a manifest (pods, templates, the autoscaler)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "env" and isinstance(item, list):
                yield from item
            else:
                yield from _env_entries(item)
    elif isinstance(value, list):
        for item in value:
            yield from _env_entries(item)


def _ray_version(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:2])


def test_every_cluster_and_job_runs_with_token_authentication() -> None:
    """KubeRay: the RayCluster has authOptions.mode token (KubeRay >= 1.5.1 creates the Secret
    and gives the token to every Ray container and to the submitters of the RayJobs that select
    it), with a Ray that has token authentication (>= 2.52); every RayJob and RayCronJob runs
    on such a cluster. The dashboard listens on the pod's address only with the token on."""
    clusters = {doc["metadata"]["name"]: doc["spec"] for doc in _of_kind("RayCluster")}
    for spec in clusters.values():
        assert spec["authOptions"]["mode"] == "token"
        assert _ray_version(spec["rayVersion"]) >= (2, 52)
    for job in _job_specs():
        selected = job.get("clusterSelector", {}).get("ray.io/cluster")
        cluster = clusters[selected] if selected else job["rayClusterSpec"]
        assert cluster["authOptions"]["mode"] == "token", job["entrypoint"]


def test_no_token_is_written_in_deploy() -> None:
    """A token is read from a Secret (KubeRay) or a file copied from the user's machine (the
    launcher), never written in a manifest: no Secret objects, no RAY_AUTH_TOKEN values."""
    assert not _of_kind("Secret")
    for where, doc in DOCUMENTS:
        for entry in _env_entries(doc):
            if entry["name"] == "RAY_AUTH_TOKEN":
                assert "value" not in entry and entry["valueFrom"]["secretKeyRef"], where
    text = "\n".join(path.read_text() for path in (*MANIFESTS, DEPLOY / "ray-cluster.yaml"))
    assert "RAY_AUTH_TOKEN=" not in text and "auth_token:" not in text


def test_launcher_runs_ray_with_a_token_file_and_a_loopback_dashboard() -> None:
    """``ray up``: every Ray process of the image runs with RAY_AUTH_MODE=token and the token
    file that file_mounts copies from the user's home (outside the repository); the dashboard
    listens on the head's loopback (``ray dashboard`` forwards it over SSH)."""
    options = dict(
        option.removeprefix("-e ").split("=", 1)
        for option in LAUNCHER["docker"]["run_options"]
        if option.startswith("-e ")
    )
    assert options["RAY_AUTH_MODE"] == "token"
    source = LAUNCHER["file_mounts"][options["RAY_AUTH_TOKEN_PATH"]]
    assert source.startswith("~/")
    (start,) = [c for c in LAUNCHER["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in start.split()
    text = (DEPLOY / "ray-cluster.yaml").read_text()
    assert "0.0.0.0" not in text


def _tolerates(pod: dict[str, Any], taint: dict[str, str]) -> bool:
    return any(
        t["key"] == taint["key"]
        and t.get("effect") in (None, taint["effect"])
        and (t["operator"] == "Exists" or t.get("value") == taint["value"])
        for t in pod.get("tolerations", [])
    )


def test_gpu_groups_autoscale_spot_first_then_on_demand() -> None:
    """Both GPU groups autoscale from 0 (in-tree autoscaler v2, which honours group
    priority): the preemptible group is tried first and only it goes to, and tolerates, the
    tainted spot nodes, at a priority class that evicts nobody; the groups run the same pods.
    The launcher's node types say the same with spot instances."""
    cluster = _the("RayCluster")["spec"]
    assert cluster["enableInTreeAutoscaling"] and cluster["autoscalerOptions"]["version"] == "v2"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    spot, on_demand = groups["gpu-spot"], groups["gpu"]
    for group in groups.values():
        assert 0 == group["replicas"] == group["minReplicas"] < group["maxReplicas"]
    assert spot["priority"] > on_demand.get("priority", 0)
    spot_pod, on_demand_pod = spot["template"]["spec"], on_demand["template"]["spec"]
    ((label, value),) = spot_pod["nodeSelector"].items()
    taint = {"key": label, "value": value, "effect": "NoSchedule"}
    assert _tolerates(spot_pod, taint) and not _tolerates(on_demand_pod, taint)
    classes = {doc["metadata"]["name"]: doc for doc in _of_kind("PriorityClass")}
    preemptible = classes[spot_pod["priorityClassName"]]
    assert preemptible["value"] < 0 and preemptible["preemptionPolicy"] == "Never"
    head_class = classes[_head_pod()["priorityClassName"]]
    assert head_class["value"] > preemptible["value"]
    assert spot_pod["containers"] == on_demand_pod["containers"]
    assert spot_pod["volumes"] == on_demand_pod["volumes"]
    types = LAUNCHER["available_node_types"]
    assert types["gpu-spot"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert "InstanceMarketOptions" not in types["gpu"]["node_config"]
    assert types["gpu-spot"]["priority"] > types["gpu"].get("priority", 0)
    assert types["gpu-spot"]["resources"] == types["gpu"]["resources"]


NETWORK_OPTIONS = ["NCCL_IB_HCA", "NCCL_SOCKET_IFNAME", "FI_PROVIDER", "FI_EFA_USE_DEVICE_RDMA"]


def test_nccl_network_options_are_documented_where_they_are_set() -> None:
    """InfiniBand and EFA: each setting in deploy/README.md's table is offered (commented) in
    both cluster configs, and the image can carry EFA's libfabric and aws-ofi-nccl."""
    table = README[README.index("### Network between nodes") :].split("\n## ")[0]
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", table, flags=re.MULTILINE))
    assert set(NETWORK_OPTIONS) <= documented
    kuberay = (DEPLOY / "kuberay" / "raycluster.yaml").read_text()
    launcher = (DEPLOY / "ray-cluster.yaml").read_text()
    for name in documented:
        assert name in kuberay and name in launcher, name
    assert any(arg.startswith("EFA_INSTALLER_VERSION=") for arg in _dockerfile("ARG"))


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


def _head_pod() -> dict[str, Any]:
    return _the("RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]


def _config_map_files() -> dict[str, dict[str, str]]:
    """ConfigMap name → {key: repository file} for each ``kubectl create configmap NAME
    --from-file=…`` command in deploy/README.md (the only way the ConfigMaps are made)."""
    text = README.replace("\\\n", " ")
    made: dict[str, dict[str, str]] = {}
    for name, sources in re.findall(r"kubectl create configmap (\S+)((?: --from-file=\S+)+)", text):
        files = {Path(f).name: f for f in re.findall(r"--from-file=(\S+)", sources)}
        assert made.setdefault(name, files) == files, f"ConfigMap {name} is made two ways"
    return made


def _spec_in_repo(path: str) -> str:
    """The repository file a job's spec path names: the image's copy (a path relative to
    its workdir) or a file of a ConfigMap the head pod mounts."""
    pod = _head_pod()
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in pod["containers"][0]["volumeMounts"]:
        config_map = volumes[mount["name"]].get("configMap")
        if config_map and Path(path).parent == Path(mount["mountPath"]):
            files = _config_map_files().get(config_map["name"])
            assert files, f"deploy/README.md never creates ConfigMap {config_map['name']}"
            assert Path(path).name in files, f"{path}: not in ConfigMap {config_map['name']}"
            return files[Path(path).name]
    assert not Path(path).is_absolute(), f"{path}: neither in the image nor mounted"
    return path


def test_every_job_runs_a_spec_of_this_repo_that_validates(monkeypatch) -> None:
    for variable in _head_pod()["containers"][0]["env"]:  # the specs' ${SSLPIPE_…} paths
        monkeypatch.setenv(variable["name"], variable["value"])
    specs = set()
    for job in _job_specs():
        words = shlex.split(job["entrypoint"])
        assert words[:2] == ["sslpipe", "run"], job["entrypoint"]
        args = build_parser().parse_args(words[1:])  # the real CLI accepts it
        spec = _spec_in_repo(args.spec)
        assert (REPO / spec).is_file(), spec
        load_spec(REPO / spec, args.overrides)
        specs.add(spec)
    assert specs == {
        "pipelines/examples/imagenet_vicreg_resnet50.yaml",
        "pipelines/examples/retrain_nightly.yaml",
    }


def test_nightly_jobs_read_the_spec_from_a_config_map_edited_by_the_readme_loop() -> None:
    pod = _head_pod()
    (head,) = pod["containers"]
    mounted = {
        m["mountPath"]: v["configMap"]
        for m in head["volumeMounts"]
        for v in pod["volumes"]
        if v["name"] == m["name"] and "configMap" in v
    }
    (config_map,) = mounted.values()
    assert config_map["optional"]  # the cluster starts before the nightly job is set up
    nightly = [
        shlex.split(job["entrypoint"])[2]
        for job in _job_specs()
        if "retrain_nightly" in job["entrypoint"]
    ]
    assert len(nightly) == 2 and all(Path(p).parent.as_posix() in mounted for p in nightly)
    # The loop: edit the repository's file, validate it, apply it as the ConfigMap.
    (source,) = _config_map_files()[config_map["name"]].values()
    validate = README.index(f"sslpipe validate {source}")
    apply = README.index(f"kubectl create configmap {config_map['name']} ", validate)
    loop = README[validate:apply].splitlines()[-1] + README[apply:].split("```")[0]
    assert f"--from-file={source}" in loop
    assert "--dry-run=client -o yaml | kubectl apply -f -" in loop


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
    assert f"-t {image}" in README
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


def _quantity(value: str | int | float) -> float:
    """A Kubernetes CPU/GPU quantity: 8, "88", "500m"."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


CONFIGS = ("raycluster.yaml", "ray-cluster.yaml")


def _node_kinds(config: str) -> tuple[list[tuple[dict[str, float], int, bool]], int | None]:
    """Every kind of node a deploy config may start: (what one gives Ray, how many there may
    be, whether it counts against the cap), and the cap on worker nodes in all (None: none).
    KubeRay caps each group (maxReplicas); the launcher each type and all of them together."""
    if config == "raycluster.yaml":
        cluster = _the("RayCluster")["spec"]
        groups = [(cluster["headGroupSpec"], 1)]
        groups += [(g, g["maxReplicas"]) for g in cluster["workerGroupSpecs"]]
        kinds = []
        for group, count in groups:
            params = group["rayStartParams"]
            limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
            cpus = _quantity(params.get("num-cpus", limits["cpu"]))
            gpus = _quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
            kinds.append(({"CPU": cpus, "GPU": gpus}, count, False))
        return kinds, None
    kinds = []
    for name, node_type in LAUNCHER["available_node_types"].items():
        resources = {"CPU": 0, "GPU": 0, **node_type["resources"]}
        if name == LAUNCHER["head_node_type"]:
            kinds.append((resources, 1, False))
        else:
            kinds.append((resources, node_type["max_workers"], True))
    return kinds, LAUNCHER["max_workers"]


def _room(config: str, need: dict[str, float]) -> int:
    """How many workers that each reserve ``need`` the nodes of ``config`` can hold at most."""
    kinds, cap = _node_kinds(config)
    fits = [(min(int(node[r] // n) for r, n in need.items() if n), count, capped)
            for node, count, capped in kinds]  # fmt: skip
    room, left = 0, cap
    for fit, count, capped in sorted(fits, key=lambda kind: kind[0], reverse=True):
        nodes = min(count, left) if capped and left is not None else count
        room += fit * nodes
        left = left - nodes if capped and left is not None else left
    return room


def _worker_demand(stage: Any) -> dict[str, float]:
    """What one worker of a pretrain or probe stage reserves: its CPUs (the stage's own
    ``cpus_per_worker``, dali_threads + 1) and a GPU with use_gpu."""
    return {"CPU": stage.cpus_per_worker(), "GPU": int(stage.use_gpu)}


def _most_workers(stage: Any) -> int:
    """A stage's workers; an elastic pretrain group's ``max``."""
    workers = stage.num_workers
    return workers if isinstance(workers, int) else workers.max


def _shortfalls(spec_name: str, overrides: tuple[str, ...] = ()) -> list[str]:
    """For each pretrain/probe stage of a spec and each deploy config: why its workers (an
    elastic group's max) do not fit in the nodes that config may start (empty when they do)."""
    spec = load_spec(EXAMPLES / spec_name, overrides)
    problems = []
    for stage in spec.stages:
        if stage.type not in ("pretrain", "probe"):
            continue
        need, workers = _worker_demand(stage), _most_workers(stage)
        for config in CONFIGS:
            if (room := _room(config, need)) < workers:
                problems.append(
                    f"{spec_name} {stage.name}: {workers} workers of {need}; "
                    f"{config} has room for {room}"
                )
    return problems


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_example_fits_what_deploy_provides(example: str, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    assert _shortfalls(example) == []


MULTI_NODE = ["imagenet_vicreg_resnet50_8nodes.yaml", "imagenet_vicreg_resnet50_16nodes.yaml"]


def test_node_count_is_a_value_past_the_biggest_example(monkeypatch) -> None:
    """The 8- and 16-node examples (elastic, from half their nodes) fit both configs as
    shipped, the README's commands submit them, and 64 nodes do not fit: the node counts are
    the values to raise (maxReplicas, max_workers), named in the README."""
    monkeypatch.chdir(REPO)
    submitted = re.findall(r"^\s*sslpipe submit pipelines/examples/(\S+)", README, re.MULTILINE)
    assert set(MULTI_NODE) <= set(submitted)
    for example in MULTI_NODE:
        stages = {s.type: s for s in load_spec(EXAMPLES / example).stages}
        low, high = stages["pretrain"].worker_range()
        assert high > 8 and low == high // 2 and stages["pretrain"].use_gpu, example
        assert stages["probe"].num_workers == high
        # Shards on the shared NFS volume: plain reads, not memory maps.
        assert not stages["pretrain"].memory_map and not stages["probe"].memory_map
        assert _shortfalls(example) == []
    beyond = _shortfalls(MULTI_NODE[-1], ("stages.pretrain.num_workers=512",))
    assert [p.split(" has room")[0].split("; ")[-1] for p in beyond] == list(CONFIGS)
    assert "`maxReplicas`" in README and "`max_workers`" in README
