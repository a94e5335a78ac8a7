"""The Kubernetes manifests under deploy/k8s: every overlay renders with kustomize, every object
matches the Kubernetes schemas (kubernetes-validate, strict) or, for KEDA's ScaledObject, the
schema in tests/deploy/schemas, and the policies of issue 5 hold for every object."""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from services.common import jetstream
from services.common.sealing import Sealer
from services.common.webhook_urls import UrlPolicy
from services.webhooks.settings import WebhookSettings
from tests.deploy import netpol
from tests.deploy.kube import (
    K8S,
    OVERLAYS,
    REPO,
    Obj,
    by_name,
    containers,
    env_of,
    name_of,
    of_kind,
    render,
    selector_matches,
    workloads,
)

NAMESPACES = {"dev": "media-dev", "dev-keda": "media-dev", "prod": "media"}
KEDA_OVERLAYS = ("dev-keda", "prod")
# The oldest Kubernetes the manifests promise to work on (README, "Requirements") and the newest
# that kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.31.0", kubernetes_validate.utils.latest_version())
APP_IMAGE = "media-pipeline"
SENDER = "webhooks"  # the webhook sender: a fixed number of replicas, the only internet egress
APP_DEPLOYMENTS = ("job-service", "notifier", "media-worker-image", "media-worker-video", SENDER)
AUTOSCALED = tuple(name for name in APP_DEPLOYMENTS if name != SENDER)
GRPC_PORTS = {"job-service": 50051, "notifier": 50052, "media-worker": 50053, "webhooks": 50055}
WORKER_SERVICE_PORT = 50054  # job_service's internal listener: WorkerService, JobReaderService
METRICS_PORT = 9100
HEALTH_PORT = 8086
SCHEMAS = Path(__file__).parent / "schemas"
SECRET_NAMES = {
    "media-db",
    "media-auth",
    "media-s3",
    "media-worker",
    "media-google",
    "media-webhooks",
    "media-webhook-keys",
}
DEV_SECRET_NAMES = SECRET_NAMES | {"media-postgres"}
SECRETISH = re.compile(
    r"PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY|PRIVATE(?!_NETWORKS)|DATABASE_URL", re.I
)


def is_app(container: Obj) -> bool:
    return container["image"].split("/")[-1].split(":")[0].split("@")[0] == APP_IMAGE


def app_containers(objs: list[Obj]) -> list[tuple[Obj, Obj, Obj]]:
    return [
        (obj, template, c)
        for obj, template in workloads(objs)
        for c in containers(template)
        if is_app(c)
    ]


# --- rendering and schemas ---------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_into_its_namespace(overlay: str) -> None:
    objs = render(overlay)
    assert objs, f"{overlay} rendered nothing"
    namespace = NAMESPACES[overlay]
    for obj in objs:
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == namespace
        else:
            assert obj["metadata"].get("namespace") == namespace, name_of(obj)
    names = [(obj["kind"], obj["metadata"]["name"]) for obj in objs]
    assert len(names) == len(set(names)), "duplicate objects"
    assert {d["metadata"]["name"] for d in of_kind(objs, "Deployment")} >= set(APP_DEPLOYMENTS)


def test_base_renders_on_its_own() -> None:
    # The base is what other environments build on; it must render without an overlay.
    assert render("base")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_match_kubernetes_schemas(overlay: str, version: str) -> None:
    errors = []
    for obj in render(overlay):
        if obj["kind"] == "ScaledObject":
            continue  # a CRD: test_scaled_objects_match_keda_schema
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{name_of(obj)}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{name_of(obj)}: {exc.message}")
    assert not errors, "\n".join(errors)


@functools.cache
def keda_validator() -> jsonschema.Draft202012Validator:
    """The ScaledObject schema, resolving Kubernetes definitions from kubernetes-validate."""
    schema = json.loads((SCHEMAS / "keda.sh-v1alpha1-scaledobject.json").read_text())
    version = kubernetes_validate.utils.latest_version()
    definitions = json.loads(
        resources.files("kubernetes_validate")
        .joinpath(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json")
        .read_text()
    )
    registry: Registry[Any] = Registry().with_resources(
        [
            (schema["$id"], Resource.from_contents(schema)),
            (definitions["$id"], Resource.from_contents(definitions)),
        ]
    )
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def schema_errors(obj: Obj) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in keda_validator().iter_errors(obj)
    ]


@pytest.mark.parametrize("overlay", KEDA_OVERLAYS)
def test_scaled_objects_match_keda_schema(overlay: str) -> None:
    scaled = of_kind(render(overlay), "ScaledObject")
    assert len(scaled) == 2
    for obj in scaled:
        assert not schema_errors(obj), (name_of(obj), schema_errors(obj))


def test_validators_reject_malformed_objects() -> None:
    # The checks above are only worth something if the validators do say no.
    deployment = by_name(render("prod"), "Deployment", "job-service")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grcp"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    scaled = by_name(render("prod"), "ScaledObject", "media-worker-video")
    scaled["spec"]["minReplicas"] = 0  # the HPA's spelling, not KEDA's
    assert schema_errors(scaled)
    scaled = by_name(render("prod"), "ScaledObject", "media-worker-video")
    del scaled["spec"]["triggers"][0]["metadata"]["consumer"]
    assert schema_errors(scaled)
    scaled["spec"]["triggers"][0]["metadata"]["consumer"] = "worker-video"
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 2
    assert schema_errors(scaled)


# --- pods: probes, resources, security -----------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_long_running_containers_have_liveness_and_readiness_probes(overlay: str) -> None:
    for obj, template in workloads(render(overlay)):
        if obj["kind"] in ("Job", "CronJob"):
            continue  # run to completion: nothing to route to, nothing to restart
        for c in containers(template, init=False):
            for probe in ("livenessProbe", "readinessProbe"):
                assert probe in c, f"{name_of(obj)} {c['name']} has no {probe}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_cpu_and_memory_requests_and_limits(overlay: str) -> None:
    for obj, template in workloads(render(overlay)):
        for c in containers(template):
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resource in res.get(part, {}), (
                        f"{name_of(obj)} {c['name']}: no {resource} {part[:-1]}"
                    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_restricted(overlay: str) -> None:
    """Non-root with a numeric user, read-only root filesystem, no privilege escalation, no
    capabilities, the runtime's seccomp profile: Pod Security "restricted" and then some."""
    for obj, template in workloads(render(overlay)):
        pod = template["spec"]
        pod_sc = pod.get("securityContext", {})
        where = name_of(obj)
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(host), f"{where}: {host}"
        assert not [v for v in pod.get("volumes", []) if "hostPath" in v], f"{where}: hostPath"
        assert pod.get("automountServiceAccountToken") is False, f"{where}: API token mounted"
        for c in containers(template):
            sc = c.get("securityContext", {})
            what = f"{where} {c['name']}"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, what
            user = sc.get("runAsUser", pod_sc.get("runAsUser"))
            assert isinstance(user, int) and user > 0, f"{what}: runAsUser {user!r}"
            assert sc.get("readOnlyRootFilesystem") is True, f"{what}: writable root filesystem"
            assert sc.get("allowPrivilegeEscalation") is False, what
            assert not sc.get("privileged"), what
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], what
            assert not sc.get("capabilities", {}).get("add"), what
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", f"{what}: seccomp"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_app_containers_use_native_grpc_probes_on_their_health_port(overlay: str) -> None:
    objs = render(overlay)
    for obj, _template, c in app_containers(objs):
        if obj["kind"] == "Job":
            continue
        port = GRPC_PORTS[c["name"]]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["grpc"] == port, name_of(obj)
        env = env_of(c, objs)
        assert env["LISTEN_ADDR"] == f"[::]:{port}"
        # Probes cannot speak TLS: they use the plaintext, health-only listener.
        assert ports["health"] == HEALTH_PORT, name_of(obj)
        assert env["HEALTH_LISTEN_ADDR"] == f"[::]:{HEALTH_PORT}"
        # Liveness asks for a service that stays SERVING while the process lives, so that an
        # unreachable dependency (readiness) never restarts the pod.
        for probe in ("startupProbe", "livenessProbe"):
            assert c[probe]["grpc"] == {"port": HEALTH_PORT, "service": "liveness"}, (
                name_of(obj),
                probe,
            )
        assert c["readinessProbe"]["grpc"] == {"port": HEALTH_PORT}, name_of(obj)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_app_containers_run_existing_entrypoints(overlay: str) -> None:
    for obj, _template, c in app_containers(render(overlay)):
        command = c["command"]
        assert command[:2] == ["python", "-m"], name_of(obj)
        module = command[2]
        main = REPO.joinpath(*module.split("."), "__main__.py")
        assert main.is_file(), f"{name_of(obj)} runs {module}, which has no __main__.py"
        if obj["kind"] == "Job":
            assert command[2:] == ["services.job_service", "migrate"]
        else:
            assert len(command) == 3, name_of(obj)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_app_pods_expose_metrics_for_prometheus(overlay: str) -> None:
    objs = render(overlay)
    for obj, template, c in app_containers(objs):
        if obj["kind"] == "Job":
            continue
        annotations = template["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", name_of(obj)
        assert annotations.get("prometheus.io/port") == str(METRICS_PORT), name_of(obj)
        assert annotations.get("prometheus.io/path") == "/metrics", name_of(obj)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports.get("metrics") == METRICS_PORT, name_of(obj)
        assert env_of(c, objs)["METRICS_PORT"] == str(METRICS_PORT), name_of(obj)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_writable_paths_are_empty_dirs(overlay: str) -> None:
    # A read-only root needs /tmp from a volume: tempfile, boto3 and the worker's WORK_DIR use it.
    objs = render(overlay)
    for obj, template, c in app_containers(objs):
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts, name_of(obj)
        volume = next(v for v in template["spec"]["volumes"] if v["name"] == mounts["/tmp"])
        assert "emptyDir" in volume, name_of(obj)
        work_dir = env_of(c, objs).get("WORK_DIR")
        assert work_dir in (None, "/tmp"), name_of(obj)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_the_services_own_shutdown(overlay: str) -> None:
    objs = render(overlay)
    for obj, template, c in app_containers(objs):
        if obj["kind"] == "Job":
            continue
        env = env_of(c, objs)
        grace = template["spec"]["terminationGracePeriodSeconds"]
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        if "WORKER_KINDS" in env:
            # In-flight jobs get SHUTDOWN_GRACE_SECONDS; then nak, drain NATS (5 s) and
            # stop the health server: all before the kubelet's SIGKILL.
            needed = float(env["SHUTDOWN_GRACE_SECONDS"] or 0) + 15
            if env["WORKER_KINDS"] == "video":
                assert grace >= 60, "a video worker needs time to hand back a job"
        else:
            needed = pre_stop + float(env["SHUTDOWN_GRACE_SECONDS"] or 0) + 10
        assert grace >= needed, f"{name_of(obj)}: {grace}s < {needed}s"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_pools_are_separate(overlay: str) -> None:
    objs = render(overlay)
    kinds = {}
    for name in ("media-worker-image", "media-worker-video"):
        deployment = by_name(objs, "Deployment", name)
        (c,) = deployment["spec"]["template"]["spec"]["containers"]
        kinds[name] = env_of(c, objs)["WORKER_KINDS"]
    assert kinds == {"media-worker-image": "image", "media-worker-video": "video"}


# --- availability and scaling ------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_and_statefulset_has_one_matching_pdb(overlay: str) -> None:
    objs = render(overlay)
    pdbs = of_kind(objs, "PodDisruptionBudget")
    for obj, template in workloads(objs):
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        labels = template["metadata"]["labels"]
        matching = [p for p in pdbs if selector_matches(p["spec"]["selector"], labels)]
        assert len(matching) == 1, f"{name_of(obj)}: {len(matching)} PodDisruptionBudgets"
        spec = matching[0]["spec"]
        # minAvailable equal to the replica count would block every drain.
        assert "maxUnavailable" in spec, name_of(matching[0])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpas_scale_job_service_and_notifier(overlay: str) -> None:
    objs = render(overlay)
    targets = {
        h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(objs, "HorizontalPodAutoscaler")
    }
    assert set(targets) == {"job-service", "notifier"}
    for name, hpa in targets.items():
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        by_name(objs, "Deployment", name)
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaled_deployments_leave_replicas_to_the_autoscaler(overlay: str) -> None:
    # A replicas field would be reset by every `kubectl apply`, fighting the HPA or KEDA.
    objs = render(overlay)
    for name in AUTOSCALED:
        assert "replicas" not in by_name(objs, "Deployment", name)["spec"], name
    # The sender has no autoscaler: two replicas, so that one takes over the other's deliveries.
    assert by_name(objs, "Deployment", SENDER)["spec"]["replicas"] == 2


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rollouts_never_drop_below_capacity(overlay: str) -> None:
    objs = render(overlay)
    for name in APP_DEPLOYMENTS:
        strategy = by_name(objs, "Deployment", name)["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate"
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0, name


@pytest.mark.parametrize("overlay", KEDA_OVERLAYS)
def test_keda_scales_each_worker_pool_on_its_own_consumer(overlay: str) -> None:
    objs = render(overlay)
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in of_kind(objs, "ScaledObject")}
    assert set(scaled) == {"media-worker-image", "media-worker-video"}
    for name, obj in scaled.items():
        deployment = by_name(objs, "Deployment", name)
        (c,) = deployment["spec"]["template"]["spec"]["containers"]
        kind = env_of(c, objs)["WORKER_KINDS"]
        spec = obj["spec"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "nats-jetstream"
        meta = trigger["metadata"]
        assert meta["stream"] == jetstream.DISPATCH_STREAM
        assert meta["consumer"] == jetstream.worker_consumer(kind)
        assert meta["account"] == "$G"
        assert spec.get("minReplicaCount", 0) <= spec["maxReplicaCount"]
        # One lag unit per job: at least one job per pod in flight before the next pod.
        concurrency = int(env_of(c, objs)["WORKER_CONCURRENCY"] or 1)
        assert 1 <= int(meta["lagThreshold"]) <= 2 * concurrency, name
    assert scaled["media-worker-video"]["spec"]["minReplicaCount"] == 0
    assert scaled["media-worker-image"]["spec"]["minReplicaCount"] >= 1


def test_dev_keda_reads_lag_from_the_dev_nats() -> None:
    objs = render("dev-keda")
    service = by_name(objs, "Service", "nats")
    ports = {p["port"] for p in service["spec"]["ports"]}
    for obj in of_kind(objs, "ScaledObject"):
        endpoint = obj["spec"]["triggers"][0]["metadata"]["natsServerMonitoringEndpoint"]
        host, port = endpoint.rsplit(":", 1)
        assert host == f"nats.{NAMESPACES['dev-keda']}.svc.cluster.local"
        assert int(port) in ports


# --- services, config, secrets -----------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_pods_and_name_real_ports(overlay: str) -> None:
    objs = render(overlay)
    for service in of_kind(objs, "Service"):
        selected = [
            (obj, t)
            for obj, t in workloads(objs)
            if selector_matches(
                {"matchLabels": service["spec"]["selector"]}, t["metadata"]["labels"]
            )
        ]
        assert selected, f"{name_of(service)} selects no pods"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for obj, template in selected:
                named = {
                    p.get("name"): p["containerPort"]
                    for c in containers(template)
                    for p in c.get("ports", [])
                }
                assert target in named or target in named.values(), (
                    f"{name_of(service)} targets {target!r}, which {name_of(obj)} lacks"
                )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_services_use_cluster_ip_and_declare_h2c(overlay: str) -> None:
    # README "Load balancing": a ClusterIP Service plus the servers' max connection age.
    objs = render(overlay)
    for name, port_name, port in (
        ("job-service", "grpc", 50051),
        ("job-service", "grpc-worker", WORKER_SERVICE_PORT),
        ("notifier", "grpc", 50052),
    ):
        service = by_name(objs, "Service", name)
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
        assert service["spec"].get("clusterIP") != "None"
        grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == port_name)
        assert grpc_port["port"] == port
        assert grpc_port["appProtocol"] == "kubernetes.io/h2c"
    assert by_name(objs, "Service", "job-service-headless")["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_job_service_address_points_at_its_service(overlay: str) -> None:
    objs = render(overlay)
    for _obj, _template, c in app_containers(objs):
        addr = env_of(c, objs).get("JOB_SERVICE_ADDR")
        if addr is not None:
            host, port = addr.rsplit(":", 1)
            service = by_name(objs, "Service", host)
            assert int(port) in [p["port"] for p in service["spec"]["ports"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_job_service_limits_every_user(overlay: str) -> None:
    # One user must not be able to queue unbounded paid generations: both per-user limits on.
    objs = render(overlay)
    container = next(containers(by_name(objs, "Deployment", "job-service")["spec"]["template"]))
    env = env_of(container, objs)
    for name in ("RATE_LIMIT_PER_MINUTE", "RATE_LIMIT_BURST", "MAX_ACTIVE_JOBS_PER_USER"):
        value = env.get(name)
        assert value is not None and int(value) > 0, f"{overlay}: {name}={value!r}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_call_the_worker_listener(overlay: str) -> None:
    """WorkerService is served on a port of its own (WORKER_LISTEN_ADDR), which clients may not
    reach; the public port does not serve it."""
    objs = render(overlay)
    (js,) = by_name(objs, "Deployment", "job-service")["spec"]["template"]["spec"]["containers"]
    assert env_of(js, objs)["WORKER_LISTEN_ADDR"] == f"[::]:{WORKER_SERVICE_PORT}"
    ports = {p["name"]: p["containerPort"] for p in js["ports"]}
    assert ports["grpc-worker"] == WORKER_SERVICE_PORT
    for name in ("media-worker-image", "media-worker-video"):
        (c,) = by_name(objs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        assert env_of(c, objs)["JOB_SERVICE_ADDR"] == f"job-service:{WORKER_SERVICE_PORT}", name


def secret_refs(container: Obj) -> dict[str, Obj]:
    return {
        var["name"]: var["valueFrom"]["secretKeyRef"]
        for var in container.get("env", [])
        if "secretKeyRef" in var.get("valueFrom", {})
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_webhook_sender_reads_jobs_and_shares_the_url_policy(overlay: str) -> None:
    """The sender reads jobs on job_service's internal listener with a credential of its own,
    keeps deliveries in job_service's database, and checks every address with the same closed
    policy job_service applies at registration."""
    objs = render(overlay)
    (sender,) = by_name(objs, "Deployment", SENDER)["spec"]["template"]["spec"]["containers"]
    (js,) = by_name(objs, "Deployment", "job-service")["spec"]["template"]["spec"]["containers"]
    env, js_env = env_of(sender, objs), env_of(js, objs)
    assert sender["command"] == ["python", "-m", "services.webhooks"]
    assert env["JOB_SERVICE_ADDR"] == f"job-service:{WORKER_SERVICE_PORT}"
    refs = secret_refs(sender)
    assert refs["WEBHOOKS_TOKEN"] == {"name": "media-webhooks", "key": "WEBHOOKS_TOKEN"}
    assert refs["DATABASE_URL"] == secret_refs(js)["DATABASE_URL"]
    # The same keys seal (job_service) and open (the sender) the endpoints' secrets.
    keys = {"name": "media-webhook-keys", "key": "WEBHOOK_SECRETS_KEYS"}
    assert refs["WEBHOOK_SECRETS_KEYS"] == secret_refs(js)["WEBHOOK_SECRETS_KEYS"] == keys
    assert env["NATS_URL"] == js_env["NATS_URL"]
    for name in ("WEBHOOK_ALLOW_HTTP", "WEBHOOK_ALLOW_PRIVATE_NETWORKS"):
        assert env[name] == js_env[name] == "false", f"{overlay}: {name}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_webhook_sender_starts_with_the_designed_settings(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender's environment, as the cluster would give it, loads through its settings into
    the retry schedule and limits the README describes."""
    objs = render(overlay)
    (sender,) = by_name(objs, "Deployment", SENDER)["spec"]["template"]["spec"]["containers"]
    env = env_of(sender, objs)
    for name, value in env.items():
        monkeypatch.setenv(name, "from-a-secret" if value is None else value)
    monkeypatch.setenv("WEBHOOK_SECRETS_KEYS", Sealer.new_key())  # a Secret's, of the right form
    settings = WebhookSettings.from_env()
    assert settings.url_policy == UrlPolicy(allow_http=False, allow_private=False)
    assert settings.retry_schedule == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert settings.retry_jitter == 0.1
    assert settings.timeout_seconds == 15
    assert settings.disable_after_seconds == 5 * 86400
    assert (settings.max_in_flight, settings.max_in_flight_per_endpoint) == (64, 4)
    assert settings.max_in_flight_per_user == 16
    assert settings.response_max_bytes == 1024
    assert settings.poll_seconds == 1.0
    # An attempt in flight at SIGTERM ends before the grace does.
    assert settings.timeout_seconds < float(env["SHUTDOWN_GRACE_SECONDS"] or 0)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_maps_set_no_empty_values(overlay: str) -> None:
    # The services read an empty variable as set-to-empty, not as unset: an empty
    # S3_PUBLIC_ENDPOINT_URL would send presigned URLs to AWS instead of S3_ENDPOINT_URL.
    for config in of_kind(render(overlay), "ConfigMap"):
        for key, value in config.get("data", {}).items():
            assert value.strip(), f"{name_of(config)}: {key} is empty"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_values_in_rendered_objects(overlay: str) -> None:
    objs = render(overlay)
    assert not of_kind(objs, "Secret"), "Secrets are created out of band (README, Secrets)"
    allowed = DEV_SECRET_NAMES if overlay.startswith("dev") else SECRET_NAMES
    for config in of_kind(objs, "ConfigMap"):
        for key in config.get("data", {}):
            assert not SECRETISH.search(key), f"{name_of(config)} holds {key}"
    for obj, template in workloads(objs):
        for c in containers(template):
            for var in c.get("env", []):
                if SECRETISH.search(var["name"]):
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    assert ref is not None, f"{name_of(obj)}: {var['name']} not from a Secret"
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    assert ref["name"] in allowed, f"{name_of(obj)}: unknown Secret {ref['name']}"
            for source in c.get("envFrom", []):
                assert "secretRef" not in source, "name each secret variable explicitly"


# Patterns of real credentials: a JWT, an AWS access key ID, a PEM private key, a GCP API key,
# a password inside a URL (but not the placeholder "password" or a $variable).
CREDENTIAL_PATTERNS = [
    re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\."),
    re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    re.compile(r"://[^/\s:@]+:(?!password@)[^@\s/$<{]{6,}@"),
]


def test_no_credentials_committed_under_deploy() -> None:
    offenders = []
    for path in sorted((REPO / "deploy").rglob("*")):
        if not path.is_file():
            continue
        text = path.read_text()
        offenders += [f"{path}: {p.pattern}" for p in CREDENTIAL_PATTERNS if p.search(text)]
        if path.name in ("kustomization.yaml", "kustomization.yml"):
            doc = yaml.safe_load(text)
            assert "secretGenerator" not in doc, f"{path}: secrets are made by secrets.sh"
    assert not offenders, offenders


# --- network policies --------------------------------------------------------------------------


def endpoints(namespace: str) -> dict[str, netpol.Endpoint]:
    c = "app.kubernetes.io/component"
    return {
        "job-service": netpol.Endpoint(namespace, {c: "job-service"}),
        "notifier": netpol.Endpoint(namespace, {c: "notifier"}),
        "worker": netpol.Endpoint(namespace, {c: "worker", "media-pipeline/pool": "video"}),
        "migrate": netpol.Endpoint(namespace, {c: "migrate"}),
        "webhooks": netpol.Endpoint(namespace, {c: "webhooks"}),
        "client": netpol.Endpoint(namespace, {"media-pipeline/client": "true"}),
        "stranger": netpol.Endpoint(namespace, {"app": "something-else"}),
        "ingress-controller": netpol.Endpoint(
            "ingress-nginx", {"app": "ingress"}, {"media-pipeline/client": "true"}
        ),
        "other-namespace": netpol.Endpoint("elsewhere", {"media-pipeline/client": "true"}),
        "prometheus": netpol.Endpoint("monitoring", {"app": "prometheus"}),
        "keda": netpol.Endpoint("keda", {"app": "keda-operator"}),
        "nats": netpol.Endpoint(namespace, {c: "nats"}),
        "postgres": netpol.Endpoint(namespace, {c: "postgres"}),
        "s3": netpol.Endpoint(namespace, {c: "s3"}),
        "outside": netpol.EXTERNAL,
        "outside-v6": netpol.outside("2606:4700:4700::1111"),
    }


# (source, destination, port) that the data paths of docs/architecture.md need, in every overlay...
PATHS = [
    ("client", "job-service", 50051),
    ("client", "notifier", 50052),
    ("ingress-controller", "job-service", 50051),
    ("ingress-controller", "notifier", 50052),
    ("notifier", "job-service", 50051),
    ("worker", "job-service", WORKER_SERVICE_PORT),
    ("worker", "outside", 443),  # Google APIs, S3
    ("webhooks", "job-service", WORKER_SERVICE_PORT),  # JobReaderService
    ("webhooks", "outside", 443),  # webhook endpoints, on any port, IPv4 and IPv6
    ("webhooks", "outside", 8443),
    ("webhooks", "outside-v6", 443),
    ("prometheus", "job-service", 9100),
    ("prometheus", "notifier", 9100),
    ("prometheus", "worker", 9100),
    ("prometheus", "webhooks", 9100),
]
# ...where Postgres, NATS and S3 are external (prod)...
EXTERNAL_PATHS = [
    ("job-service", "outside", 5432),
    ("job-service", "outside", 4222),
    ("job-service", "outside", 443),
    ("notifier", "outside", 4222),
    ("worker", "outside", 4222),
    ("migrate", "outside", 5432),
    ("webhooks", "outside", 5432),
    ("webhooks", "outside", 4222),
]
# ...where they are pods beside the services (dev)...
DEV_PATHS = [
    ("job-service", "postgres", 5432),
    ("migrate", "postgres", 5432),
    ("job-service", "nats", 4222),
    ("notifier", "nats", 4222),
    ("worker", "nats", 4222),
    ("job-service", "s3", 5000),
    ("worker", "s3", 5000),
    ("keda", "nats", 8222),
    ("webhooks", "postgres", 5432),
    ("webhooks", "nats", 4222),
]
# ...and paths nobody needs, which must stay closed.
FORBIDDEN = [
    ("stranger", "job-service", 50051),
    ("other-namespace", "job-service", 50051),  # its namespace is not labelled as a client
    ("client", "worker", 50053),
    ("job-service", "worker", 50053),
    ("prometheus", "job-service", 50051),
    ("notifier", "outside", 5432),
    ("notifier", "outside", 443),
    ("worker", "outside", 5432),
    ("migrate", "outside", 443),
    ("migrate", "job-service", 50051),
    # The internal port (WorkerService) is not the clients', and workers need no other.
    ("client", "job-service", WORKER_SERVICE_PORT),
    ("ingress-controller", "job-service", WORKER_SERVICE_PORT),
    ("stranger", "job-service", WORKER_SERVICE_PORT),
    ("prometheus", "job-service", WORKER_SERVICE_PORT),
    ("migrate", "job-service", WORKER_SERVICE_PORT),
    ("worker", "job-service", 50051),
    # The sender takes no calls and needs only the internal port.
    ("client", "webhooks", 50055),
    ("stranger", "webhooks", 50055),
    ("job-service", "webhooks", 50055),
    ("webhooks", "job-service", 50051),
    ("webhooks", "notifier", 50052),
    ("webhooks", "worker", 50053),
]
DEV_FORBIDDEN = [
    ("worker", "postgres", 5432),
    ("notifier", "postgres", 5432),
    ("notifier", "s3", 5000),
    ("client", "nats", 4222),
    ("client", "postgres", 5432),
    ("client", "s3", 5000),
    ("prometheus", "nats", 4222),
    ("webhooks", "s3", 5000),
]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_open_exactly_the_design_paths(overlay: str) -> None:
    objs = render(overlay)
    policies = of_kind(objs, "NetworkPolicy")
    points = endpoints(NAMESPACES[overlay])
    dev = overlay.startswith("dev")
    want_open = PATHS + (DEV_PATHS if dev else EXTERNAL_PATHS)
    want_closed = FORBIDDEN + (DEV_FORBIDDEN if dev else [])
    wrong = [
        f"{src} -> {dst}:{port} should be open"
        for src, dst, port in want_open
        if not netpol.allowed(policies, points[src], points[dst], port)
    ] + [
        f"{src} -> {dst}:{port} should be closed"
        for src, dst, port in want_closed
        if netpol.allowed(policies, points[src], points[dst], port)
    ]
    for name in ("job-service", "notifier", "worker", "migrate", "client", "webhooks"):
        if not netpol.allowed(policies, points[name], netpol.EXTERNAL, 53, "UDP"):
            wrong.append(f"{name} cannot resolve names")
    assert not wrong, "\n".join(wrong)


# Addresses a webhook URL could resolve to that the sender must never reach, and public neighbours
# of each range's edges, which it must reach (so that an except list that is too wide fails too).
UNREACHABLE = [
    "0.0.0.0",
    "10.0.0.1",
    "10.255.255.254",
    "100.64.0.1",
    "100.127.255.254",
    "127.0.0.1",
    "169.254.169.254",  # the cloud metadata service
    "169.254.0.1",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.0.1",
    "192.168.255.254",
    "224.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "fc00::1",
    "fd00:ec2::254",  # AWS's IPv6 metadata service
    "fe80::1",
    "ff02::1",
]
REACHABLE = [
    "9.255.255.254",
    "11.0.0.1",
    "100.63.255.254",
    "100.128.0.1",
    "126.255.255.254",
    "128.0.0.1",
    "169.253.255.254",
    "169.255.0.1",
    "172.15.255.254",
    "172.32.0.1",
    "192.167.255.254",
    "192.169.0.1",
    "223.255.255.254",
    "2001:4860:4860::8888",
    "2600::1",
]
WEBHOOK_PORTS = (80, 443, 8443)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_webhook_sender_reaches_the_internet(overlay: str) -> None:
    """The sender reaches public addresses on any port and no private, loopback, link-local
    (metadata), shared, multicast or reserved one; no other component gains internet egress."""
    policies = of_kind(render(overlay), "NetworkPolicy")
    points = endpoints(NAMESPACES[overlay])
    sender = points["webhooks"]
    wrong = [
        f"webhooks -> {address}:{port} should be open"
        for address in REACHABLE
        for port in WEBHOOK_PORTS
        if not netpol.allowed(policies, sender, netpol.outside(address), port)
    ] + [
        f"webhooks -> {address}:{port} should be closed"
        for address in UNREACHABLE
        for port in WEBHOOK_PORTS
        if netpol.allowed(policies, sender, netpol.outside(address), port)
    ]
    # TCP only: no UDP but DNS's, which every pod has.
    if netpol.allowed(policies, sender, netpol.EXTERNAL, 443, "UDP"):
        wrong.append("webhooks -> outside:443/UDP should be closed")
    # job_service and the workers reach HTTPS (S3, Google's APIs); nobody but the sender more.
    for name in ("job-service", "notifier", "worker", "migrate", "client", "stranger"):
        for port in (80, 8443):
            for address in ("93.184.215.14", "2606:4700:4700::1111", "169.254.169.254"):
                if netpol.allowed(policies, points[name], netpol.outside(address), port):
                    wrong.append(f"{name} -> {address}:{port} should be closed")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_selected_by_a_policy_in_both_directions(overlay: str) -> None:
    objs = render(overlay)
    policies = of_kind(objs, "NetworkPolicy")
    default_deny = by_name(objs, "NetworkPolicy", "default-deny")["spec"]
    assert default_deny["podSelector"] == {}
    assert set(default_deny["policyTypes"]) == {"Ingress", "Egress"}
    assert not default_deny.get("ingress") and not default_deny.get("egress")
    for obj, template in workloads(objs):
        labels = template["metadata"]["labels"]
        component = labels["app.kubernetes.io/component"]
        own = [
            p
            for p in policies
            if p["spec"]["podSelector"] and selector_matches(p["spec"]["podSelector"], labels)
        ]
        types = {t for p in own for t in p["spec"]["policyTypes"]}
        assert types == {"Ingress", "Egress"}, f"{name_of(obj)} ({component}): {types or 'none'}"


# --- rollout order -----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_migration_job_runs_with_only_pre_rollout_objects(overlay: str) -> None:
    """README "Upgrades" applies `-l media-pipeline/phase=pre-rollout` first and waits for the
    Job: everything the Job needs must carry that label, and no service may migrate by itself."""
    objs = render(overlay)
    phase = "media-pipeline/phase"
    job = by_name(objs, "Job", "media-migrate")
    assert job["metadata"]["labels"].get(phase) == "pre-rollout"
    pod = job["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    needed = [by_name(objs, "ServiceAccount", pod["spec"]["serviceAccountName"])]
    needed += [by_name(objs, "ConfigMap", s["configMapRef"]["name"]) for s in c["envFrom"]]
    needed += [
        p
        for p in of_kind(objs, "NetworkPolicy")
        if selector_matches(p["spec"]["podSelector"], pod["metadata"]["labels"])
    ]
    needed += of_kind(objs, "Namespace")
    for obj in needed:
        assert obj["metadata"].get("labels", {}).get(phase) == "pre-rollout", name_of(obj)
    for name in APP_DEPLOYMENTS:
        labels = by_name(objs, "Deployment", name)["metadata"].get("labels", {})
        assert phase not in labels, name
    (js,) = by_name(objs, "Deployment", "job-service")["spec"]["template"]["spec"]["containers"]
    assert env_of(js, objs)["MIGRATE_ON_START"] == "false"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned(overlay: str) -> None:
    for obj, template in workloads(render(overlay)):
        for c in containers(template):
            image = c["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert "@sha256:" in image or (tag and tag != "latest"), f"{name_of(obj)}: {image}"


# --- docs --------------------------------------------------------------------------------------


def test_readme_documents_every_setting_and_secret() -> None:
    readme = (K8S / "README.md").read_text()
    names: set[str] = set()
    for overlay in OVERLAYS:
        objs = render(overlay)
        for _obj, _template, c in app_containers(objs):
            names |= set(env_of(c, objs))
    missing = sorted(n for n in names if f"`{n}`" not in readme)
    assert not missing, f"deploy/k8s/README.md does not document {missing}"
    missing_secrets = sorted(s for s in DEV_SECRET_NAMES if f"`{s}`" not in readme)
    assert not missing_secrets, missing_secrets
