"""deploy/k8s/overlays/dev/secrets.sh, in its DRY_RUN mode: it makes every Secret the dev overlay
refers to, with fresh values that fit together (the worker's and the webhook sender's tokens verify
with the stored signing secret, the database URL carries the Postgres password)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from urllib.parse import urlsplit

import yaml

from services.common.auth import WEBHOOKS_ROLE, TokenVerifier
from services.common.config import AuthSettings
from services.common.sealing import Sealer
from tests.deploy.kube import K8S, containers, env_of, kubectl, render, workloads

SCRIPT = K8S / "overlays" / "dev" / "secrets.sh"


def run_script() -> dict[str, dict[str, str]]:
    result = subprocess.run(
        ["bash", str(SCRIPT)],
        env={**os.environ, "DRY_RUN": "1", "KUBECTL": kubectl(), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    secrets = {}
    for doc in yaml.safe_load_all(result.stdout):
        if not doc:
            continue
        assert doc["kind"] == "Secret" and doc["metadata"]["namespace"] == "media-dev"
        data = {k: base64.b64decode(v).decode() for k, v in doc["data"].items()}
        secrets[doc["metadata"]["name"]] = data
    return secrets


def test_secrets_cover_every_required_reference_of_the_dev_overlay() -> None:
    secrets = run_script()
    objs = render("dev")
    for _obj, template in workloads(objs):
        for c in containers(template):
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    assert ref["key"] in secrets.get(ref["name"], {}), ref


def test_secret_values_fit_together_and_are_fresh() -> None:
    first, second = run_script(), run_script()
    verifier = TokenVerifier(
        AuthSettings(jwt_secret=first["media-auth"]["AUTH_JWT_SECRET"], audience="media", issuer="")
    )
    assert verifier.verify(first["media-worker"]["WORKER_TOKEN"]).is_worker
    assert verifier.verify(first["media-webhooks"]["WEBHOOKS_TOKEN"]).roles == {WEBHOOKS_ROLE}
    keys = first["media-webhook-keys"]["WEBHOOK_SECRETS_KEYS"]
    assert Sealer([keys]).open(Sealer([keys]).seal("whsec_x")) == "whsec_x"  # a valid key
    assert keys != second["media-webhook-keys"]["WEBHOOK_SECRETS_KEYS"]
    url = urlsplit(first["media-db"]["DATABASE_URL"])
    assert url.password == first["media-postgres"]["POSTGRES_PASSWORD"]
    assert (url.hostname, url.port, url.path) == ("postgres", 5432, "/media")
    for name, values in first.items():
        for key, value in values.items():
            assert len(value) >= 16, (name, key)
            assert value != second[name][key], f"{name}.{key} is not random"


def test_audience_matches_the_dev_configuration() -> None:
    # The tokens are minted for audience "media": the services must expect the same.
    objs = render("dev")
    for _obj, template in workloads(objs):
        for c in containers(template):
            if "envFrom" in c:
                assert env_of(c, objs).get("AUTH_AUDIENCE") == "media"
