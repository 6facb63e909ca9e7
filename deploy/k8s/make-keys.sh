#!/usr/bin/env sh
# Prints the Secret `fabric-keys` (CURVE keys for broker, frontends and workers) made from a
# fresh key directory. Apply it once per cluster, before the manifests:
#   deploy/k8s/make-keys.sh | kubectl apply -f -
# The keys exist only in the printed Secret; nothing is written to the repository.
set -eu
NAMESPACE=${NAMESPACE:-fabricserve}
PYTHON=${PYTHON:-python3}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$(dirname "$0")/../.."
"$PYTHON" -m fabric.curve init "$dir/keys" >/dev/null
k="$dir/keys"
kubectl create secret generic fabric-keys --namespace "$NAMESPACE" --dry-run=client -o yaml \
  --from-file=broker.key="$k/broker.key" \
  --from-file=broker.key_secret="$k/broker.key_secret" \
  --from-file=frontend.key="$k/allow/frontends/frontend.key" \
  --from-file=frontend.key_secret="$k/frontend.key_secret" \
  --from-file=worker.key="$k/allow/workers/worker.key" \
  --from-file=worker.key_secret="$k/worker.key_secret"
