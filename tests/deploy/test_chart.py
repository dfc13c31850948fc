"""The Helm chart, rendered the way helm does (tests/deploy/chart.py) and validated without a cluster.

Every rendered manifest is checked with kubernetes-validate (strict: unknown fields fail) against
the pinned Kubernetes version, for the default values and the GPU, scaled-out and external-Redis
values files; values are checked against values.schema.json. ServiceMonitor and KubeRay's RayCluster
are CRDs the validator has no schema for: they get structural checks here. ``helm lint`` / ``helm template`` run too
where helm is on PATH (it is not installable on these machines).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess

import jsonschema
import kubernetes_validate
import pytest

from .chart import CHART, RenderError, build_renderer, by_kind, container, env_of, missing_toolchain, render, values

K8S_VERSION = "1.33.0"
VALUE_FILES = {"default": (), "gpu": ("ci/gpu-values.yaml",), "scaled-out": ("ci/scaled-out-values.yaml",),
               "external-redis": ("ci/external-redis-values.yaml",), "ray": ("ci/ray-values.yaml",)}
SCHEMA = json.loads((CHART / "values.schema.json").read_text())

@pytest.fixture(scope="module")
def renderer(tmp_path_factory):
    reason = missing_toolchain()
    if reason:
        pytest.skip(reason)
    return build_renderer(tmp_path_factory.mktemp("helmrender"))


@pytest.fixture(scope="module")
def rendered(renderer) -> dict[str, list[dict]]:
    return {name: render(renderer, values(*files)) for name, files in VALUE_FILES.items()}


@pytest.mark.parametrize("case", VALUE_FILES)
def test_values_match_the_schema(case):
    jsonschema.Draft7Validator(SCHEMA).validate(values(*VALUE_FILES[case]))


def test_the_schema_refuses_bad_values():
    validator = jsonschema.Draft7Validator(SCHEMA)
    for bad in ({"decode": {"replicas": -1}}, {"model": {"dtype": "int4"}}, {"prefil": {}},
                {"env": {"PATH": "/x"}}, {"redis": {"external": {"url": "http://nope"}}}):
        assert list(validator.iter_errors(values(overrides=bad))), bad


@pytest.mark.parametrize("case", VALUE_FILES)
def test_every_manifest_is_valid_for_the_pinned_kubernetes(rendered, case):
    for doc in rendered[case]:
        if doc["kind"] == "ServiceMonitor":
            check_service_monitor(doc, by_kind(rendered[case], "Service"))
            continue
        if doc["kind"] == "RayCluster":
            check_ray_cluster(doc)
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_really_rejects_a_bad_manifest(rendered):
    deployment = dict(by_kind(rendered["default"], "Deployment")["demo-tandem-decode"])
    deployment["spec"] = dict(deployment["spec"], replicas="many")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def check_service_monitor(doc: dict, services: dict[str, dict]) -> None:
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    selected = [s for s in services.values()
                if doc["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert len(selected) == 1, doc["metadata"]["name"]
    ports = {p["name"] for p in selected[0]["spec"]["ports"]}
    for endpoint in doc["spec"]["endpoints"]:
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"


def test_default_install_has_every_part_and_no_optional_ones(rendered):
    docs = rendered["default"]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("Deployment") == 3 and kinds.count("PodDisruptionBudget") == 3
    assert "StatefulSet" in kinds and "NetworkPolicy" in kinds
    assert "HorizontalPodAutoscaler" not in kinds and "ServiceMonitor" not in kinds
    redis = by_kind(docs, "StatefulSet")["demo-tandem-redis"]
    assert "--appendonly" in container(redis)["args"] and redis["spec"]["volumeClaimTemplates"]


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_workers_advertise_their_pod_ip_and_probe_the_engine_over_grpc_health(rendered, role):
    pod = by_kind(rendered["default"], "Deployment")[f"demo-tandem-{role}"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert env_of(c)["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert "--advertise-host=$(POD_IP)" in c["args"] and "--host=$(POD_IP)" in c["args"]
    service = "tandem.v1.PrefillService" if role == "prefill" else "tandem.v1.DecodeService"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["grpc"]["service"] == service, probe
    assert pod["securityContext"]["runAsNonRoot"] and not c["securityContext"]["allowPrivilegeEscalation"]
    assert env_of(c)["TANDEM_REDIS_URL"]["value"] == "redis://demo-tandem-redis:6379/0"


def test_gpu_values_ask_for_gpus_in_requests_and_limits_and_run_on_cuda(rendered):
    for role in ("prefill", "decode"):
        pod = by_kind(rendered["gpu"], "Deployment")[f"demo-tandem-{role}"]["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert env_of(c)["TANDEM_DEVICE"]["value"] == "cuda" and pod["runtimeClassName"] == "nvidia"
        assert {"name": "shm", "mountPath": "/dev/shm"} in c["volumeMounts"]
        assert {"name": "model", "mountPath": "/models", "readOnly": True} in c["volumeMounts"]


def test_worker_pools_scale_independently_and_the_gateway_autoscales(rendered):
    deployments = by_kind(rendered["scaled-out"], "Deployment")
    assert deployments["demo-tandem-prefill"]["spec"]["replicas"] == 2
    assert deployments["demo-tandem-decode"]["spec"]["replicas"] == 6
    assert "replicas" not in deployments["demo-tandem-gateway"]["spec"]   # the HPA owns it
    assert by_kind(rendered["scaled-out"], "HorizontalPodAutoscaler")["demo-tandem-gateway"]["spec"]["minReplicas"] == 2
    assert len(by_kind(rendered["scaled-out"], "ServiceMonitor")) == 3


def test_external_redis_comes_from_a_secret_and_no_redis_runs(rendered, renderer):
    docs = rendered["external-redis"]
    assert not by_kind(docs, "StatefulSet")
    c = container(by_kind(docs, "Deployment")["demo-tandem-gateway"])
    assert env_of(c)["TANDEM_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "tandem-redis", "key": "url"}
    with pytest.raises(RenderError, match="redis.external.url"):
        render(renderer, values(overrides={"redis": {"enabled": False}}))


def test_network_policy_lets_only_the_gateway_and_peer_workers_reach_workers(rendered):
    policy = by_kind(rendered["default"], "NetworkPolicy")["demo-tandem-workers"]["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    gateway, peers, metrics = policy["ingress"]
    assert gateway["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    assert gateway["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    assert peers["from"][0]["podSelector"]["matchLabels"]["tandem.io/worker"] == "true"
    assert metrics["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    redis = by_kind(rendered["default"], "NetworkPolicy")["demo-tandem-redis"]["spec"]
    assert len(redis["ingress"][0]["from"]) == 2


@pytest.mark.skipif(shutil.which("helm") is None, reason="helm is not on PATH (no registry here carries it)")
@pytest.mark.parametrize("case", VALUE_FILES)
def test_helm_lint_and_template(case):
    flags = [arg for f in VALUE_FILES[case] for arg in ("-f", str(CHART / f))]
    subprocess.run(["helm", "lint", str(CHART), *flags], check=True, capture_output=True)
    subprocess.run(["helm", "template", "demo", str(CHART), *flags], check=True, capture_output=True)


def test_every_tandem_process_gets_the_worker_secret_from_a_secret(rendered):
    docs = rendered["default"]
    [secret] = [d for d in docs if d["kind"] == "Secret"]
    assert secret["metadata"]["name"] == "demo-tandem-worker-secret"
    assert len(base64.b64decode(secret["data"]["worker-secret"])) >= 32
    for name, deployment in by_kind(docs, "Deployment").items():
        env = {e["name"]: e for e in container(deployment)["env"]}
        ref = env["TANDEM_WORKER_SECRET"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "demo-tandem-worker-secret", "key": "worker-secret"}, name


def check_ray_cluster(doc: dict) -> None:
    """The parts of KubeRay's ray.io/v1 RayCluster schema the chart uses, each pod a valid PodSpec."""
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    spec = doc["spec"]
    assert set(spec) <= {"rayVersion", "headGroupSpec", "workerGroupSpecs", "enableInTreeAutoscaling"}
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", **group["template"]["metadata"]},
               "spec": group["template"]["spec"]}
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_ray_mode_renders_a_ray_cluster_running_tandem_ray_up_instead_of_the_deployments(rendered):
    docs = rendered["ray"]
    assert not by_kind(docs, "Deployment") and not by_kind(docs, "PodDisruptionBudget")
    assert not [d for d in rendered["default"] if d["kind"] == "RayCluster"]
    [cluster] = [d for d in docs if d["kind"] == "RayCluster"]
    assert cluster["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    assert cluster["spec"]["rayVersion"] == values()["ray"]["version"]
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"    # no worker actor on the head
    h = head["template"]["spec"]["containers"][0]
    assert h["image"] == "tandem-ray:0.1.0"
    command = " ".join(h["args"])
    assert "${KUBERAY_GEN_RAY_START_CMD/--block/} &&" in command
    assert ("tandem ray up --address auto --host 0.0.0.0 --port 8000 --prefill 2 --decode 4 "
            "--worker-cpus 2 --worker-gpus 0") in command
    [workers] = cluster["spec"]["workerGroupSpecs"]
    assert (workers["replicas"], workers["minReplicas"], workers["maxReplicas"]) == (3, 1, 6)
    w = workers["template"]["spec"]["containers"][0]
    assert w["args"] == ["ulimit -n 65536; $KUBERAY_GEN_RAY_START_CMD"] and w["image"] == h["image"]
    assert w["resources"]["requests"]["cpu"] == "2" and "nvidia.com/gpu" not in w["resources"]["limits"]
    for c in (h, w):   # the head's driver and the workers' actors share Redis and the worker secret
        env = env_of(c)
        assert env["TANDEM_WORKER_SECRET"]["valueFrom"]["secretKeyRef"] == {
            "name": "demo-tandem-worker-secret", "key": "worker-secret"}
        assert env["TANDEM_REDIS_URL"]["value"] == "redis://demo-tandem-redis:6379/0"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert env_of(h)["TANDEM_DATA_DIR"]["value"].startswith("/tmp/")   # the root filesystem is read-only
    # the gateway Service reaches the head pod (labelled as the gateway); Redis admits the Ray pods
    service = by_kind(docs, "Service")["demo-tandem-gateway"]
    assert service["spec"]["selector"].items() <= head["template"]["metadata"]["labels"].items()
    redis = by_kind(docs, "NetworkPolicy")["demo-tandem-redis"]["spec"]["ingress"][0]["from"]
    assert any(f["podSelector"]["matchLabels"].get("tandem.io/ray") == "true" for f in redis)
    assert "demo-tandem-workers" not in by_kind(docs, "NetworkPolicy")


def test_ray_worker_gpus_are_requested_from_kubernetes_and_from_ray(renderer):
    docs = render(renderer, values("ci/ray-values.yaml", overrides={
        "ray": {"workerGpus": 1, "workers": {"gpu": 1, "runtimeClassName": "nvidia"}}}))
    [cluster] = [d for d in docs if d["kind"] == "RayCluster"]
    pod = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
    assert pod["runtimeClassName"] == "nvidia"
    assert "--worker-gpus 1" in " ".join(cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["args"])
