#!/bin/sh
# Writes infra/.env from infra/.env.example: a fresh random value for every empty credential, readable user
# names, everything else as in the example. Refuses to overwrite an existing .env (its passwords are in use).
set -eu
infra_dir=$(cd "$(dirname "$0")/.." && pwd)
if [ -e "$infra_dir/.env" ]; then
    echo "$infra_dir/.env exists; remove it first to start over (the volumes keep the old passwords)" >&2
    exit 1
fi
secret() { openssl rand -hex 24; }
umask 077
while IFS= read -r line; do
    case "$line" in
        MINIO_ROOT_USER=) echo "MINIO_ROOT_USER=ragloop-admin" ;;
        AWS_ACCESS_KEY_ID=) echo "AWS_ACCESS_KEY_ID=ragloop-service" ;;
        MLFLOW_TRACKING_USERNAME=) echo "MLFLOW_TRACKING_USERNAME=ragloop" ;;
        PREFECT_API_AUTH_STRING=) echo "PREFECT_API_AUTH_STRING=ragloop:$(secret)" ;;
        [A-Z]*=) echo "$line$(secret)" ;;
        *) printf '%s\n' "$line" ;;
    esac
done < "$infra_dir/.env.example" > "$infra_dir/.env"
echo "wrote $infra_dir/.env (mode 600)"
