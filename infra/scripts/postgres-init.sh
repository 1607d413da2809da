#!/bin/sh
# Runs once, when the postgres-data volume is empty (the official image's /docker-entrypoint-initdb.d hook):
# one database and one owning role each for Prefect and MLflow, with the passwords from .env.
# Changing a password in .env later does not change the role: run ALTER ROLE ... PASSWORD by hand.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v prefect_password="$PREFECT_DB_PASSWORD" -v mlflow_password="$MLFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
CREATE DATABASE prefect OWNER prefect;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
SQL
