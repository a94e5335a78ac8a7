#!/usr/bin/env bash
# Creates the dev overlay's Secrets with fresh random values, straight into the cluster, so that
# nothing secret is ever committed. Run it from anywhere, before or after `kubectl apply -k`:
#
#   deploy/k8s/overlays/dev/secrets.sh            # namespace media-dev, current kube context
#   NAMESPACE=other deploy/k8s/overlays/dev/secrets.sh
#   DRY_RUN=1 deploy/k8s/overlays/dev/secrets.sh  # print the manifests instead of applying them
#
# It also prints a token for a demo user, for mediactl (export MEDIA_TOKEN=...).
# Existing Secrets are replaced: restart the pods afterwards (kubectl rollout restart deploy).
set -euo pipefail

NAMESPACE=${NAMESPACE:-media-dev}
DRY_RUN=${DRY_RUN:-}
KUBECTL=${KUBECTL:-kubectl}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../../.." && pwd)
if [[ -z "${PYTHON:-}" ]]; then
  PYTHON=python3
  [[ -x "$ROOT/.venv/bin/python" ]] && PYTHON="$ROOT/.venv/bin/python"
fi

# One Python run makes every value, so the tokens are signed with the secret stored beside them.
# The worker, notifier and webhook sender tokens live as long as the dev cluster is likely to
# (a year); the demo one a day.
values=$(cd "$ROOT" && "$PYTHON" - <<'PY'
import secrets

from services.common.auth import NOTIFIER_ROLE, WEBHOOKS_ROLE, WORKER_ROLE, mint_token
from services.common.sealing import Sealer

jwt_secret = secrets.token_urlsafe(48)
print(f"POSTGRES_PASSWORD={secrets.token_hex(24)}")
print(f"AUTH_JWT_SECRET={jwt_secret}")
print(f"AWS_ACCESS_KEY_ID=dev{secrets.token_hex(8)}")
print(f"AWS_SECRET_ACCESS_KEY={secrets.token_urlsafe(30)}")
worker = mint_token(jwt_secret, "media-worker", roles=(WORKER_ROLE,), ttl_seconds=365 * 86400)
print(f"WORKER_TOKEN={worker}")
notifier = mint_token(jwt_secret, "media-notifier", roles=(NOTIFIER_ROLE,), ttl_seconds=365 * 86400)
print(f"NOTIFIER_TOKEN={notifier}")
webhooks = mint_token(jwt_secret, "media-webhooks", roles=(WEBHOOKS_ROLE,), ttl_seconds=365 * 86400)
print(f"WEBHOOKS_TOKEN={webhooks}")
print(f"WEBHOOK_SECRETS_KEYS={Sealer.new_key()}")
print(f"DEMO_TOKEN={mint_token(jwt_secret, 'demo-user', ttl_seconds=86400)}")
PY
)
value() { sed -n "s/^$1=//p" <<<"$values"; }

pg_password=$(value POSTGRES_PASSWORD)
database_url="postgresql+psycopg2://media:${pg_password}@postgres:5432/media"

# Values travel through file descriptors, not argv, so they never show in `ps`.
secret() {
  local name=$1
  shift
  echo "---"
  "$KUBECTL" -n "$NAMESPACE" create secret generic "$name" --dry-run=client -o yaml \
    --from-env-file=<(printf '%s\n' "$@")
}

manifests() {
  secret media-postgres "POSTGRES_PASSWORD=$pg_password"
  secret media-db "DATABASE_URL=$database_url"
  secret media-auth "AUTH_JWT_SECRET=$(value AUTH_JWT_SECRET)" "NOTIFIER_TOKEN=$(value NOTIFIER_TOKEN)"
  secret media-worker "WORKER_TOKEN=$(value WORKER_TOKEN)"
  secret media-webhooks "WEBHOOKS_TOKEN=$(value WEBHOOKS_TOKEN)"
  secret media-webhook-keys "WEBHOOK_SECRETS_KEYS=$(value WEBHOOK_SECRETS_KEYS)"
  secret media-s3 "AWS_ACCESS_KEY_ID=$(value AWS_ACCESS_KEY_ID)" \
    "AWS_SECRET_ACCESS_KEY=$(value AWS_SECRET_ACCESS_KEY)"
}

if [[ -n "$DRY_RUN" ]]; then
  manifests
  exit 0
fi
# Created, never applied: applying a bare Namespace would strip the overlay's Pod Security labels.
"$KUBECTL" get namespace "$NAMESPACE" >/dev/null 2>&1 || "$KUBECTL" create namespace "$NAMESPACE"
manifests | "$KUBECTL" apply -f -
echo
echo "Secrets created in namespace $NAMESPACE. A token for the user demo-user (24 hours):"
echo "export MEDIA_TOKEN=$(value DEMO_TOKEN)"
