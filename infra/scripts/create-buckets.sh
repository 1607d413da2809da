#!/bin/sh
# One-shot, on every `up` (idempotent): the buckets for MLflow artifacts and the DVC remote, and the service
# user (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) that MLflow and DVC use, limited to those two buckets.
# The root credentials stay with the MinIO console.
set -eu
mc alias set ragloop http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
for bucket in mlflow-artifacts dvc-remote; do
    mc mb --ignore-existing "ragloop/$bucket"
done
mc admin policy create ragloop ragloop-buckets /scripts/ragloop-buckets-policy.json
mc admin user add ragloop "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"
if ! out=$(mc admin policy attach ragloop ragloop-buckets --user "$AWS_ACCESS_KEY_ID" 2>&1); then
    case "$out" in
        *already*) ;;  # attached by an earlier run
        *) echo "$out" >&2; exit 1 ;;
    esac
fi
echo "buckets and service user ready"
