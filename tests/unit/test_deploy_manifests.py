"""The deployment files, checked offline: docker-compose.yml, the Dockerfiles and .dockerignore,
the Kubernetes manifests (against the real Kubernetes JSON schemas), KEDA, Prometheus and Grafana.

Tools come from deploy/requirements-dev-deploy.txt. Only the `docker compose config` check skips,
and only when no Compose v2+ binary is installed.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import dockerfile
import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml
from check_jsonschema import builtin_schemas

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKER_DIR = ROOT / "deploy" / "docker"
K8S_DIR = ROOT / "deploy" / "k8s"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "inferq.json"

TORCH_PIN = "torch==2.13.0"
# The oldest Kubernetes these manifests promise to run on, and the newest the schemas know.
K8S_VERSIONS = ("1.30.0", "1.37.0")
STATEFUL_SERVICES = ("postgres", "redis", "kafka")
APP_SERVICES = (
    "api",
    "worker",
    "worker-maintenance",
    "webhooks",
    "gpu-worker",
    "worker-langid",
    "beat",
    "ingest",
)
WORKER_QUEUES = ("interactive", "bulk")


def tool(name: str) -> str:
    """A binary installed by deploy/requirements-dev-deploy.txt (in the venv's bin or on PATH)."""
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` not found: pip install -r deploy/requirements-dev-deploy.txt")
    return found


# --------------------------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def services() -> dict[str, dict[str, Any]]:
    found = compose().get("services")
    assert isinstance(found, dict) and found, "docker-compose.yml defines no services"
    return found


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """depends_on as {service: condition}; the short list form means service_started."""
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in raw.items()}


def env_of(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(item.split("=", 1) for item in raw)
    return {key: str(value) for key, value in raw.items()}


def command_of(service: dict[str, Any]) -> list[str]:
    raw = service.get("command") or []
    return raw.split() if isinstance(raw, str) else [str(part) for part in raw]


def test_compose_file_matches_the_compose_specification_schema() -> None:
    schema = builtin_schemas.get_builtin_schema("vendor.compose-spec")
    jsonschema.validate(compose(), schema)


def test_compose_depends_on_names_only_defined_services() -> None:
    defined = set(services())
    for name, service in services().items():
        unknown = set(depends_on(service)) - defined
        assert not unknown, f"{name} depends on undefined services {sorted(unknown)}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_start_only_after_migrations_completed(name: str) -> None:
    conditions = depends_on(services()[name])
    assert conditions.get("migrate") == "service_completed_successfully", (
        f"{name} must wait for `migrate` to complete successfully, got {conditions}"
    )


def test_migrate_is_a_one_shot_db_upgrade_after_postgres_is_healthy() -> None:
    migrate = services()["migrate"]
    assert command_of(migrate) == ["inferq", "db", "upgrade"]
    assert str(migrate.get("restart", "no")) == "no", "a one-shot job must not restart"
    assert depends_on(migrate).get("postgres") == "service_healthy"


@pytest.mark.parametrize("name", STATEFUL_SERVICES)
def test_stateful_services_have_a_healthcheck(name: str) -> None:
    check = services()[name].get("healthcheck") or {}
    assert check.get("test") and not check.get("disable"), f"{name} needs a healthcheck"


def test_dependents_of_stateful_services_wait_until_healthy() -> None:
    for name, service in services().items():
        for dependency, condition in depends_on(service).items():
            if dependency in STATEFUL_SERVICES:
                assert condition == "service_healthy", f"{name} -> {dependency}: {condition}"


def listener_names(listeners: str) -> set[str]:
    return {entry.split("://", 1)[0] for entry in listeners.split(",") if entry}


def test_kafka_is_a_single_kraft_node_without_zookeeper() -> None:
    for name, service in services().items():
        assert "zookeeper" not in name.lower()
        assert "zookeeper" not in str(service.get("image", "")).lower()
        assert not any("ZOOKEEPER" in key for key in env_of(service)), name
    kafka = services()["kafka"]
    assert str(kafka["image"]).startswith("apache/kafka:")
    env = env_of(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node_id = env["KAFKA_NODE_ID"]
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert voters == [f"{node_id}@kafka:9093"], voters

    listeners = listener_names(env["KAFKA_LISTENERS"])
    protocols = dict(
        pair.split(":") for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    advertised = listener_names(env["KAFKA_ADVERTISED_LISTENERS"])
    assert controller in listeners and controller not in advertised
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in listeners
    assert listeners <= set(protocols), (
        f"listeners without a protocol: {listeners - set(protocols)}"
    )
    assert advertised <= listeners
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1", "one broker: RF 1"


def test_kafka_topics_exist_before_ingest_starts() -> None:
    init = services()["kafka-init"]
    script = " ".join(command_of(init))
    for topic in ("inferq.requests", "inferq.results", "inferq.requests.dlq"):
        assert topic in script, f"kafka-init does not create {topic}"
    assert depends_on(init).get("kafka") == "service_healthy"
    assert depends_on(services()["ingest"]).get("kafka-init") == "service_completed_successfully"


def test_gpu_worker_is_behind_the_gpu_profile_with_a_device_reservation() -> None:
    gpu = services()["gpu-worker"]
    assert gpu.get("profiles") == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert gpu["build"]["dockerfile"] == "deploy/docker/Dockerfile.cuda"
    others = [name for name, s in services().items() if name != "gpu-worker" and s.get("profiles")]
    assert not others, f"only the GPU worker is optional, not {others}"


@pytest.mark.parametrize("name", ["worker", "gpu-worker"])
def test_compose_workers_consume_both_queues_and_get_time_to_drain(name: str) -> None:
    service = services()[name]
    command = command_of(service)
    assert command[:2] == ["inferq", "worker"]
    assert command[command.index("--queues") + 1].split(",") == list(WORKER_QUEUES)
    assert duration_seconds(str(service.get("stop_grace_period", "10s"))) >= 60


def test_someone_consumes_the_maintenance_queue() -> None:
    queues = set()
    for service in services().values():
        command = command_of(service)
        if command[:2] == ["inferq", "worker"] and "--queues" in command:
            queues.update(command[command.index("--queues") + 1].split(","))
    assert "maintenance" in queues, "beat's relay and sweeper tasks would never run"


def test_the_webhooks_queue_has_its_own_torch_free_sender() -> None:
    """Deliveries wait on receivers: they must not share a worker with model batches."""
    senders = [
        (name, service)
        for name, service in services().items()
        if command_of(service)[:2] == ["inferq", "worker"]
        and "webhooks" in option(command_of(service), "--queues")
    ]
    assert [name for name, _ in senders] == ["webhooks"]
    _, sender = senders[0]
    command = command_of(sender)
    assert command[command.index("--queues") + 1] == "webhooks"
    assert sender["image"] == "inferq-api:local", "a sender needs no model: the API image"
    assert "INFERQ_SECRET_KEY" in env_of(sender)


def test_prometheus_service_mounts_deploy_prometheus() -> None:
    prometheus = services()["prometheus"]
    assert any(str(v).startswith("./deploy/prometheus:") for v in prometheus.get("volumes", []))
    config_flag = "--config.file=/etc/prometheus/prometheus.yml"
    assert config_flag in command_of(prometheus)


def test_compose_builds_reference_existing_dockerfile_targets() -> None:
    for name, service in services().items():
        build = service.get("build")
        if build is None:
            continue
        path = ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
        assert path.is_file(), f"{name}: {path} does not exist"
        assert build["target"] in stages(path), f"{name}: no stage {build['target']} in {path}"


def compose_binary() -> list[str] | None:
    """`docker compose` (plugin) or a standalone Compose v2+; None when neither is installed."""
    candidates: list[list[str]] = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    standalone = Path(sys.executable).parent / "docker-compose"
    for binary in (str(standalone), shutil.which("docker-compose")):
        if binary and Path(binary).exists():
            candidates.append([binary])
    for candidate in candidates:
        result = subprocess.run(
            [*candidate, "version", "--short"], capture_output=True, text=True, check=False
        )
        major = result.stdout.strip().lstrip("v").split(".", 1)[0]
        if result.returncode == 0 and major.isdigit() and int(major) >= 2:
            return candidate
    return None


def test_docker_compose_config_accepts_the_file_with_every_profile() -> None:
    binary = compose_binary()
    if binary is None:
        pytest.skip("no Docker Compose v2+ CLI (docker compose plugin or docker-compose) here")
    result = subprocess.run(
        [*binary, "-f", str(COMPOSE_FILE), "--profile", "gpu", "config", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------------------------
# Dockerfiles and .dockerignore
# --------------------------------------------------------------------------------------------


@cache
def instructions(path: Path) -> tuple[dockerfile.Command, ...]:
    return dockerfile.parse_file(str(path))


@cache
def stages(path: Path) -> dict[str, list[dockerfile.Command]]:
    """Stage name -> its instructions, FROM first."""
    found: dict[str, list[dockerfile.Command]] = {}
    for command in instructions(path):
        if command.cmd == "FROM":
            value = command.value
            name = value[2] if len(value) == 3 and value[1].upper() == "AS" else str(len(found))
            found[name] = [command]
        elif found:
            found[list(found)[-1]].append(command)
    return found


def base_image(path: Path, stage: str) -> str:
    """The stage's FROM with the global ARG defaults (those before the first FROM) filled in."""
    args: dict[str, str] = {}
    for command in instructions(path):
        if command.cmd == "FROM":
            break
        if command.cmd == "ARG":
            key, _, default = command.value[0].partition("=")
            args[key] = default
    image = stages(path)[stage][0].value[0]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], image)


def stage_chain(path: Path, stage: str) -> Iterator[str]:
    """The stage, the stages it is built FROM, and those it copies from, transitively."""
    seen: set[str] = set()
    todo = [stage]
    while todo:
        name = todo.pop()
        if name in seen or name not in stages(path):
            continue
        seen.add(name)
        yield name
        commands = stages(path)[name]
        todo.append(commands[0].value[0])
        for command in commands[1:]:
            todo += [f.split("=", 1)[1] for f in command.flags if f.startswith("--from=")]


def effective_user(path: Path, stage: str) -> str:
    """The USER a container of this target runs as (USER is inherited through FROM)."""
    name: str | None = stage
    while name in stages(path):
        users = [c.value[0] for c in stages(path)[name] if c.cmd == "USER"]
        if users:
            return users[-1]
        name = stages(path)[name][0].value[0]
    return "root"


def pip_installs(run_line: str) -> list[list[str]]:
    """The arguments of every `pip install` in a RUN line, split at shell operators."""
    lexer = shlex.shlex(run_line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|", "(", ")"):
            commands.append([])
        else:
            commands[-1].append(token)
    found = []
    for words in commands:
        for start in range(len(words) - 1):
            if words[start].endswith("pip") and words[start + 1] == "install":
                found.append(words[start + 2 :])
                break
    return found


def torch_specs(args: list[str]) -> list[str]:
    return [a for a in args if re.fullmatch(r"torch(\[[^\]]*\])?([=<>!~].*)?", a)]


def installs_model_extra(args: list[str]) -> bool:
    return any(re.search(r"\[[^\]]*\bmodel\b[^\]]*\]$", a) for a in args)


def runs(path: Path, stage: str) -> Iterator[str]:
    for name in stage_chain(path, stage):
        for command in stages(path)[name]:
            if command.cmd == "RUN":
                yield " ".join(command.value)


DOCKER_TARGETS = [
    (DOCKER_DIR / "Dockerfile", "api"),
    (DOCKER_DIR / "Dockerfile", "worker"),
    (DOCKER_DIR / "Dockerfile.cuda", "worker"),
]


def test_cpu_dockerfile_has_api_and_worker_targets() -> None:
    assert {"api", "worker"} <= set(stages(DOCKER_DIR / "Dockerfile"))


def test_cuda_dockerfile_builds_the_worker_on_a_cuda_runtime_image() -> None:
    path = DOCKER_DIR / "Dockerfile.cuda"
    assert "worker" in stages(path)
    roots = [base_image(path, name) for name in stage_chain(path, "worker")]
    assert any(re.match(r"(nvidia/cuda:[\w.-]*runtime|pytorch/pytorch:)", r) for r in roots), roots


@pytest.mark.parametrize(("path", "target"), DOCKER_TARGETS, ids=lambda v: getattr(v, "name", v))
def test_targets_run_as_a_non_root_user(path: Path, target: str) -> None:
    user = effective_user(path, target).split(":", 1)[0]
    assert user not in ("", "root", "0"), f"{path.name}:{target} runs as {user!r}"


@pytest.mark.parametrize(("path", "target"), DOCKER_TARGETS, ids=lambda v: getattr(v, "name", v))
def test_targets_have_a_healthcheck(path: Path, target: str) -> None:
    checks = [c for c in stages(path)[target] if c.cmd == "HEALTHCHECK"]
    assert checks and checks[-1].value[0] == "CMD", f"{path.name}:{target} has no HEALTHCHECK"


@pytest.mark.parametrize(
    ("path", "index"),
    [
        (DOCKER_DIR / "Dockerfile", "https://download.pytorch.org/whl/cpu"),
        (DOCKER_DIR / "Dockerfile.cuda", None),
    ],
    ids=["cpu", "cuda"],
)
def test_worker_installs_torch_pinned_to_2_13_0_before_the_package(
    path: Path, index: str | None
) -> None:
    installs = [args for line in runs(path, "worker") for args in pip_installs(line)]
    with_torch = [i for i, args in enumerate(installs) if torch_specs(args)]
    assert with_torch, f"{path.name}: the worker never installs torch"
    for i in with_torch:
        assert torch_specs(installs[i]) == [TORCH_PIN], installs[i]
    with_package = [i for i, args in enumerate(installs) if installs_model_extra(args)]
    assert with_package, f"{path.name}: the worker does not install the `model` extra"
    assert with_torch[0] < with_package[0], "torch must be installed before the `model` extra"
    if index is not None:
        torch_args = installs[with_torch[0]]
        assert torch_args[torch_args.index("--index-url") + 1] == index


def test_api_target_installs_neither_torch_nor_the_model_extra() -> None:
    installs = [
        args for line in runs(DOCKER_DIR / "Dockerfile", "api") for args in pip_installs(line)
    ]
    assert installs, "the api image installs nothing"
    for args in installs:
        assert not torch_specs(args), f"api image installs torch: {args}"
        assert not installs_model_extra(args), f"api image installs the model extra: {args}"


def test_hadolint_finds_nothing_in_the_dockerfiles() -> None:
    result = subprocess.run(
        [
            tool("hadolint"),
            "--no-color",
            "--failure-threshold",
            "info",
            str(DOCKER_DIR / "Dockerfile"),
            str(DOCKER_DIR / "Dockerfile.cuda"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def dockerignore_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `**` spans directories, `*` and `?` do not."""
    regex = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
        regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
            token, re.escape(token)
        )
    return re.compile(regex + r"\Z")


def dockerignore_excludes(relative: str) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent directory counts."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        regex = dockerignore_pattern(line.removeprefix("!"))
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not line.startswith("!")
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        ".git/config",
        ".venv/bin/python",
        "tests/unit/x.py",
        "core/__pycache__/x.pyc",
        ".env",
        "var/inferq.db",
    ],
)
def test_dockerignore_keeps_local_state_out_of_the_build_context(path: str) -> None:
    assert dockerignore_excludes(path), f"{path} would be sent to the Docker daemon"


def test_dockerignore_keeps_what_the_images_copy() -> None:
    needed = {"pyproject.toml", "README.md", "core/config.py", "migrations/env.py"}
    for path in (DOCKER_DIR / "Dockerfile", DOCKER_DIR / "Dockerfile.cuda"):
        for command in instructions(path):
            if command.cmd == "COPY" and not any(f.startswith("--from") for f in command.flags):
                needed.update(src for src in command.value[:-1] if src != ".")
    kept_out = sorted(p for p in needed if dockerignore_excludes(p))
    assert not kept_out, f".dockerignore drops files the build needs: {kept_out}"


def test_dockerfile_copies_only_files_that_exist() -> None:
    for path in (DOCKER_DIR / "Dockerfile", DOCKER_DIR / "Dockerfile.cuda"):
        for command in instructions(path):
            if command.cmd == "COPY" and not any(f.startswith("--from") for f in command.flags):
                missing = [src for src in command.value[:-1] if not (ROOT / src).exists()]
                assert not missing, f"{path.name} line {command.start_line} copies {missing}"


# --------------------------------------------------------------------------------------------
# Kubernetes
# --------------------------------------------------------------------------------------------

Manifest = dict[str, Any]


@cache
def k8s_documents() -> tuple[tuple[str, Manifest], ...]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return tuple(docs)


def kind(kind_name: str) -> list[Manifest]:
    return [doc for _, doc in k8s_documents() if doc["kind"] == kind_name]


def named(kind_name: str, name: str) -> Manifest:
    matches = [doc for doc in kind(kind_name) if doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind_name} {name}, found {len(matches)}"
    return matches[0]


def manifest_ids(keda: bool) -> list[str]:
    """Test ids, computed at collection: a broken file yields one id whose test then fails."""
    try:
        return [
            f"{file}:{doc['kind']}/{doc['metadata']['name']}"
            for file, doc in k8s_documents()
            if doc["apiVersion"].startswith("keda.sh/") == keda
        ]
    except (yaml.YAMLError, KeyError, TypeError) as error:
        return [f"unreadable manifests: {type(error).__name__}"]


def manifest(ident: str) -> Manifest:
    matches = [d for f, d in k8s_documents() if f"{f}:{d['kind']}/{d['metadata']['name']}" == ident]
    assert len(matches) == 1, f"{ident}: {len(matches)} manifests"
    return matches[0]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("ident", manifest_ids(keda=False))
def test_manifest_validates_against_the_kubernetes_schema(ident: str, version: str) -> None:
    doc = manifest(ident)
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(p) for p in error.path)
        pytest.fail(f"{ident} against Kubernetes {version}: {where}: {error.message}")


def test_only_builtin_kinds_and_keda_are_used() -> None:
    for file, doc in k8s_documents():
        if doc["apiVersion"].startswith("keda.sh/"):
            assert doc["kind"] in ("ScaledObject", "TriggerAuthentication"), file
        else:
            # Raises SchemaNotFoundError for a kind the schemas do not know.
            kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def test_every_manifest_sits_in_the_inferq_namespace() -> None:
    for file, doc in k8s_documents():
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "inferq", f"{file}: {doc['kind']}"


def test_kustomization_lists_every_manifest_file_and_nothing_else() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    on_disk = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk


def test_kustomize_renders_the_whole_set() -> None:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(K8S_DIR)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert len(rendered) == len(k8s_documents())
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "inferq" for d in rendered)


def workloads() -> list[Manifest]:
    return kind("Deployment") + kind("Job")


def containers(workload: Manifest) -> list[Manifest]:
    spec = workload["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def test_every_container_declares_requests_and_memory_limits() -> None:
    for workload in workloads():
        for container in containers(workload):
            resources = container.get("resources", {})
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
            assert "memory" in resources.get("limits", {}), where


QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?"
)
QUANTITY_SCALE = {
    None: 1.0,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
    "Ei": 2.0**60,
}


def quantity(value: str | int) -> float:
    """A Kubernetes resource quantity (the schemas accept any string; the API server does not)."""
    match = QUANTITY.fullmatch(str(value))
    assert match, f"{value!r} is not a Kubernetes quantity"
    suffix = match.group("suffix")
    if suffix and suffix[0] in "eE":
        return float(match.group("number") + suffix)
    return float(match.group("number")) * QUANTITY_SCALE[suffix]


def test_resource_quantities_are_valid_and_limits_cover_requests() -> None:
    for workload in workloads():
        for container in containers(workload):
            requests = container["resources"].get("requests", {})
            limits = container["resources"].get("limits", {})
            where = f"{workload['metadata']['name']}/{container['name']}"
            for resource, value in limits.items():
                assert quantity(value) >= quantity(requests.get(resource, 0)), (where, resource)
            for value in requests.values():
                quantity(value)
        for volume in workload["spec"]["template"]["spec"].get("volumes", []):
            if "sizeLimit" in volume.get("emptyDir", {}):
                quantity(volume["emptyDir"]["sizeLimit"])


def test_every_pod_runs_as_non_root_without_privilege_escalation() -> None:
    for workload in workloads():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for container in containers(workload):
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_env_sources_and_trigger_secrets_exist() -> None:
    config_maps = {d["metadata"]["name"]: d["data"] for d in kind("ConfigMap")}
    secrets = {d["metadata"]["name"]: d["stringData"] for d in kind("Secret")}
    for workload in workloads():
        for container in containers(workload):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
    for auth in kind("TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in secrets[ref["name"]], ref


def test_every_inferq_variable_the_deployments_set_is_a_setting() -> None:
    """A misspelt INFERQ_ variable is silently ignored by pydantic-settings: catch it here."""
    from core.config import Settings

    known = {f"INFERQ_{name.upper()}" for name in Settings.model_fields}
    named_in_k8s = [
        *(key for d in kind("ConfigMap") for key in d["data"]),
        *(key for d in kind("Secret") for key in d["stringData"]),
        *(
            item["name"]
            for workload in workloads()
            for container in containers(workload)
            for item in container.get("env", [])
        ),
    ]
    named_in_compose = [
        *compose()["x-inferq-env"],
        *(key for service in services().values() for key in env_of(service)),
    ]
    set_here = {name for name in named_in_k8s + named_in_compose if name.startswith("INFERQ_")}
    assert set_here, "no INFERQ_ variable found: the test reads the wrong place"
    assert set_here <= known, sorted(set_here - known)


def test_secret_manifest_is_clearly_an_example() -> None:
    assert (K8S_DIR / "secret.example.yaml").exists()
    for secret in kind("Secret"):
        assert secret["metadata"]["annotations"]["inferq.dev/example"] == "true"
        for key, value in secret["stringData"].items():
            assert "CHANGE-ME" in value, f"{key} looks like a real credential"


def test_api_probes_readiness_and_liveness_and_has_a_service() -> None:
    (api,) = containers(named("Deployment", "inferq-api"))
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    service = named("Service", "inferq-api")
    assert service["spec"]["ports"][0]["port"] == 8000


def test_services_select_pods_and_named_ports_that_exist() -> None:
    for service in kind("Service"):
        selector = service["spec"]["selector"]
        targets = [
            d
            for d in kind("Deployment")
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(targets) == 1, f"{service['metadata']['name']} selects {len(targets)} workloads"
        port_names = {p["name"] for c in containers(targets[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names


def test_deployment_selectors_match_their_pod_labels() -> None:
    for deployment in kind("Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), deployment["metadata"]["name"]


@pytest.mark.parametrize("name", ["inferq-worker", "inferq-worker-gpu"])
def test_workers_get_time_to_drain_a_batch_and_consume_both_queues(name: str) -> None:
    deployment = named("Deployment", name)
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 120
    (worker,) = containers(deployment)
    args = worker["args"]
    assert args[:2] == ["inferq", "worker"]
    assert args[args.index("--queues") + 1].split(",") == list(WORKER_QUEUES)
    assert "command" not in worker, "overriding command would drop tini and its SIGTERM relay"


def test_webhook_sender_deployment_consumes_only_the_webhooks_queue() -> None:
    deployment = named("Deployment", "inferq-worker-webhooks")
    (sender,) = containers(deployment)
    args = sender["args"]
    assert args[:2] == ["inferq", "worker"]
    assert args[args.index("--queues") + 1] == "webhooks"
    assert sender["image"].startswith("inferq-api:"), "no model: the torch-free image"
    others = [
        container["args"]
        for workload in workloads()
        if workload["metadata"]["name"] != "inferq-worker-webhooks"
        for container in containers(workload)
        if "--queues" in container.get("args", [])
    ]
    assert all("webhooks" not in args[args.index("--queues") + 1] for args in others)
    secrets = [doc for _, doc in k8s_documents() if doc.get("kind") == "Secret"]
    assert any("INFERQ_SECRET_KEY" in doc.get("stringData", {}) for doc in secrets)


def test_gpu_worker_asks_for_a_gpu_on_gpu_nodes() -> None:
    deployment = named("Deployment", "inferq-worker-gpu")
    pod = deployment["spec"]["template"]["spec"]
    (worker,) = containers(deployment)
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert pod["nodeSelector"], "GPU pods need a node selector"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert {"name": "INFERQ_DEVICE", "value": "cuda"} in worker["env"]


def test_beat_is_a_singleton_replaced_with_recreate() -> None:
    beat = named("Deployment", "inferq-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"


def test_migration_job_runs_db_upgrade_once() -> None:
    job = named("Job", "inferq-migrate")
    (migrate,) = containers(job)
    assert migrate["args"] == ["inferq", "db", "upgrade"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")


def test_autoscaled_deployments_leave_replicas_to_the_autoscaler() -> None:
    targets = [hpa["spec"]["scaleTargetRef"] for hpa in kind("HorizontalPodAutoscaler")]
    targets += [so["spec"]["scaleTargetRef"] for so in kind("ScaledObject")]
    names = [t["name"] for t in targets]
    assert len(names) == len(set(names)), "two autoscalers fight over one Deployment"
    for target in targets:
        deployment = named("Deployment", target["name"])
        assert "replicas" not in deployment["spec"], f"{target['name']}: a re-apply resets it"
    assert named("HorizontalPodAutoscaler", "inferq-api")["spec"]["minReplicas"] >= 2


def autoscaled_minimums() -> dict[str, int]:
    """Each autoscaled Deployment's name and the fewest replicas its autoscaler keeps."""
    minimums = {
        hpa["spec"]["scaleTargetRef"]["name"]: hpa["spec"].get("minReplicas", 1)
        for hpa in kind("HorizontalPodAutoscaler")
    }
    minimums |= {  # KEDA's default minReplicaCount is 0
        so["spec"]["scaleTargetRef"]["name"]: so["spec"].get("minReplicaCount", 0)
        for so in kind("ScaledObject")
    }
    return minimums


def test_pod_disruption_budgets_select_existing_workloads() -> None:
    covered: dict[str, str] = {}
    for budget in kind("PodDisruptionBudget"):
        name = budget["metadata"]["name"]
        selector = budget["spec"]["selector"]["matchLabels"]
        matches = [
            d["metadata"]["name"]
            for d in kind("Deployment")
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, f"{name} selects {matches}"
        assert matches[0] not in covered, f"{matches[0]}: two budgets, {covered[matches[0]]} too"
        covered[matches[0]] = name
    minimums = autoscaled_minimums()
    assert {"inferq-api", "inferq-worker", "inferq-worker-langid", "inferq-ingest"} <= set(minimums)
    missing = sorted(set(minimums) - set(covered))
    assert not missing, f"autoscaled Deployments without a PodDisruptionBudget: {missing}"
    for deployment, budget_name in covered.items():
        spec = named("PodDisruptionBudget", budget_name)["spec"]
        if minimums.get(deployment, 1) < 2:  # minAvailable: 1 on a lone pod blocks every drain
            assert "minAvailable" not in spec and spec["maxUnavailable"] == 1, budget_name


# KEDA's CRDs are not in the Kubernetes schemas: this schema follows keda.sh/v1alpha1
# ScaledObject and TriggerAuthentication, closed where the CRD would silently prune a typo.


def word_set(text: str) -> set[str]:
    return set(text.split())


# Per scaler: (required metadata keys, allowed metadata keys), from KEDA's scaler docs.
TRIGGER_METADATA = {
    "redis": (
        {"listName"},
        word_set(
            "address addressFromEnv host hostFromEnv port portFromEnv listName listLength "
            "activationListLength databaseIndex enableTLS unsafeSsl username usernameFromEnv "
            "passwordFromEnv"
        ),
    ),
    "prometheus": (
        {"serverAddress", "query", "threshold"},
        word_set(
            "serverAddress query queryParameters threshold activationThreshold namespace "
            "customHeaders ignoreNullValues unsafeSsl timeout authModes"
        ),
    ),
    "kafka": (
        {"bootstrapServers", "consumerGroup"},
        word_set(
            "bootstrapServers bootstrapServersFromEnv consumerGroup consumerGroupFromEnv topic "
            "topicFromEnv lagThreshold activationLagThreshold offsetResetPolicy "
            "allowIdleConsumers excludePersistentLag scaleToZeroOnInvalidOffset "
            "limitToPartitionsWithLag partitionLimitation version sasl tls "
            "ensureEvenDistributionOfPartitions"
        ),
    ),
}
STRING = {"type": "string"}
INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}


def closed(required: tuple[str, ...] = (), **properties: Any) -> dict[str, Any]:
    """A JSON schema object that rejects keys it does not name."""
    schema = {"type": "object", "additionalProperties": False, "properties": properties}
    return {**schema, "required": list(required)} if required else schema


def array_of(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": item}


def keda_resource(kind_name: str, spec: dict[str, Any]) -> dict[str, Any]:
    metadata = {"type": "object", "required": ["name", "namespace"]}
    return closed(
        ("apiVersion", "kind", "metadata", "spec"),
        apiVersion={"const": "keda.sh/v1alpha1"},
        kind={"const": kind_name},
        metadata=metadata,
        spec=spec,
    )


TRIGGER = closed(
    ("type", "metadata"),
    type={"enum": sorted(TRIGGER_METADATA)},
    name=STRING,
    metricType={"enum": ["AverageValue", "Value", "Utilization"]},
    useCachedMetrics={"type": "boolean"},
    # The CRD types every metadata value as a string: an unquoted 10 is rejected.
    metadata={"type": "object", "additionalProperties": STRING},
    authenticationRef=closed(
        ("name",),
        name=STRING,
        kind={"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
    ),
)
KEDA_SCHEMAS = {
    "ScaledObject": keda_resource(
        "ScaledObject",
        closed(
            ("scaleTargetRef", "triggers"),
            scaleTargetRef=closed(
                ("name",),
                apiVersion=STRING,
                kind=STRING,
                name=STRING,
                envSourceContainerName=STRING,
            ),
            pollingInterval=INT32,
            cooldownPeriod=INT32,
            initialCooldownPeriod=INT32,
            idleReplicaCount=INT32,
            minReplicaCount=INT32,
            maxReplicaCount=INT32,
            fallback=closed(
                ("failureThreshold", "replicas"),
                failureThreshold=INT32,
                replicas=INT32,
                behavior=STRING,
            ),
            advanced=closed(
                restoreToOriginalReplicaCount={"type": "boolean"},
                horizontalPodAutoscalerConfig=closed(name=STRING, behavior={"type": "object"}),
                scalingModifiers={"type": "object"},
            ),
            triggers={**array_of(TRIGGER), "minItems": 1},
        ),
    ),
    "TriggerAuthentication": keda_resource(
        "TriggerAuthentication",
        {
            **closed(
                secretTargetRef=array_of(
                    closed(("parameter", "name", "key"), parameter=STRING, name=STRING, key=STRING)
                ),
                env=array_of(
                    closed(
                        ("parameter", "name"), parameter=STRING, name=STRING, containerName=STRING
                    )
                ),
            ),
            "minProperties": 1,
        },
    ),
}


@pytest.mark.parametrize("ident", manifest_ids(keda=True))
def test_keda_resource_matches_its_schema(ident: str) -> None:
    doc = manifest(ident)
    kind_name, name = doc["kind"], doc["metadata"]["name"]
    jsonschema.validate(doc, KEDA_SCHEMAS[kind_name])
    if kind_name != "ScaledObject":
        return
    spec = doc["spec"]
    assert spec.get("minReplicaCount", 0) <= spec["maxReplicaCount"]
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior is not None:
        # KEDA hands this to an HPA verbatim: check it against the real HPA v2 schema.
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name},
            "spec": {
                "scaleTargetRef": spec["scaleTargetRef"],
                "minReplicas": 1,
                "maxReplicas": spec["maxReplicaCount"],
                "behavior": behavior,
            },
        }
        kubernetes_validate.validate(hpa, K8S_VERSIONS[-1], strict=True)
    names = [t.get("name") for t in spec["triggers"] if t.get("name")]
    assert len(names) == len(set(names)), "trigger names must be unique"
    auths = {a["metadata"]["name"] for a in kind("TriggerAuthentication")}
    for trigger in spec["triggers"]:
        required, allowed = TRIGGER_METADATA[trigger["type"]]
        keys = set(trigger["metadata"])
        assert required <= keys, f"{ident} {trigger['type']}: missing {required - keys}"
        assert keys <= allowed, f"{ident} {trigger['type']}: unknown {keys - allowed}"
        if "authenticationRef" in trigger:
            assert trigger["authenticationRef"]["name"] in auths
    target = spec["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    named("Deployment", target["name"])


def triggers_of(name: str, trigger_type: str) -> list[dict[str, str]]:
    so = named("ScaledObject", name)
    return [t["metadata"] for t in so["spec"]["triggers"] if t["type"] == trigger_type]


def aggregations(expr: str) -> list[promql_parser.AggregateExpr]:
    """The aggregations of an expression, outermost first."""
    found: list[promql_parser.AggregateExpr] = []

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.AggregateExpr):
            found.append(node)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def backlog_seconds_trigger(name: str, priority: str) -> dict[str, str]:
    """The one prometheus trigger of ScaledObject `name` on this priority's backlog-seconds,
    checked to aggregate the way the collector needs: every API pod scraped reports the same
    value, so pods are folded with `max by (task, priority)` (a sum would count the backlog once
    per pod), then the worst task, leaving one series."""
    found = [
        t
        for t in triggers_of(name, "prometheus")
        if "inferq_backlog_seconds" in metric_names(t["query"])
        and matcher_values(t["query"], "priority") == {priority}
    ]
    assert len(found) == 1, f"{name}: want one backlog-seconds trigger for {priority}: {found}"
    (trigger,) = found
    query = trigger["query"]
    assert metric_names(query) == {"inferq_backlog_seconds"}, query
    ops = aggregations(query)
    assert ops and all(str(op.op) == "max" for op in ops), f"only max over pods: {query}"
    innermost = ops[-1]
    assert isinstance(innermost.expr, promql_parser.VectorSelector), query
    assert str(innermost.modifier.type).endswith("By"), query
    assert set(innermost.modifier.labels) == {"task", "priority"}, query
    outer_labels = {label for op in ops[:-1] for label in op.modifier.labels}
    assert outer_labels <= {"priority"}, f"one series per trigger: {query}"
    assert trigger.get("ignoreNullValues") == "false", "a missing series must not scale down"
    return trigger


def test_worker_scales_on_both_queue_lists_and_on_backlog_seconds_per_priority() -> None:
    assert named("ScaledObject", "inferq-worker")["spec"]["scaleTargetRef"]["name"] == (
        "inferq-worker"
    )
    redis = triggers_of("inferq-worker", "redis")
    assert sorted(t["listName"] for t in redis) == sorted(WORKER_QUEUES)
    assert all(t.get("databaseIndex", "0") == "0" for t in redis), "Celery queues live in db 0"
    interactive = backlog_seconds_trigger("inferq-worker", "interactive")
    bulk = backlog_seconds_trigger("inferq-worker", "bulk")
    assert float(interactive["threshold"]) == 30, "the interactive target is 30 s"
    assert float(bulk["threshold"]) > float(interactive["threshold"])
    names = {t["name"] for t in named("ScaledObject", "inferq-worker")["spec"]["triggers"]}
    assert "backlog-items" not in names, "the queue-labelled backlog-items trigger is gone"


def test_gpu_workers_scale_from_zero_on_the_bulk_backlog() -> None:
    so = named("ScaledObject", "inferq-worker-gpu")
    assert so["spec"]["scaleTargetRef"]["name"] == "inferq-worker-gpu"
    assert so["spec"]["minReplicaCount"] == 0
    (trigger,) = so["spec"]["triggers"]
    bulk = backlog_seconds_trigger("inferq-worker-gpu", "bulk")
    assert trigger["metadata"] == bulk
    assert float(bulk["activationThreshold"]) > 0, "a small backlog must not wake a GPU"


def test_ingest_scales_on_its_consumer_group_lag_up_to_the_partition_count() -> None:
    so = named("ScaledObject", "inferq-ingest")
    assert so["spec"]["scaleTargetRef"]["name"] == "inferq-ingest"
    (kafka,) = triggers_of("inferq-ingest", "kafka")
    assert kafka["topic"] == "inferq.requests"
    assert (
        kafka["consumerGroup"]
        == named("ConfigMap", "inferq-config")["data"]["INFERQ_KAFKA_GROUP_ID"]
    )
    partitions = re.search(r"--partitions (\d+)", " ".join(command_of(services()["kafka-init"])))
    assert partitions, "kafka-init sets no partition count"
    assert so["spec"]["maxReplicaCount"] <= int(partitions.group(1)), "idle consumers"


# --------------------------------------------------------------------------------------------
# Prometheus and Grafana
# --------------------------------------------------------------------------------------------


def duration_seconds(text: str) -> float:
    return float(promql_parser.parse_duration(text).total_seconds())


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def metric_names(expr: str) -> set[str]:
    return {s.name for s in selectors(expr) if s.name}


def matcher_values(expr: str, label: str) -> set[str]:
    return {m.value for s in selectors(expr) for m in s.matchers.matchers if m.name == label}


@cache
def prometheus_config() -> dict[str, Any]:
    return yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())


def scrape_job(name: str) -> dict[str, Any]:
    jobs = {job["job_name"]: job for job in prometheus_config()["scrape_configs"]}
    assert name in jobs, f"no scrape job {name}; have {sorted(jobs)}"
    return jobs[name]


def job_targets(job: dict[str, Any]) -> set[str]:
    targets = {t for sc in job.get("static_configs", []) for t in sc["targets"]}
    targets |= {f"{n}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for n in sd["names"]}
    return targets


@pytest.mark.parametrize(
    ("job", "target"),
    [("inferq-api", "api:8000"), ("inferq-worker", "worker:9100"), ("flower", "flower:5555")],
)
def test_prometheus_scrapes_metrics_of(job: str, target: str) -> None:
    config = scrape_job(job)
    assert target in job_targets(config)
    assert config.get("metrics_path", "/metrics") == "/metrics"


def test_flower_runs_inferq_flower_behind_a_login_and_purges_offline_workers() -> None:
    """Flower serves /metrics without its login, so the `flower` scrape job needs none; the UI
    and API take the login from INFERQ_FLOWER_BASIC_AUTH (compose: the environment, Kubernetes:
    Secret inferq-flower, which no other pod reads)."""
    flower = services()["flower"]
    command = command_of(flower)
    assert command[:2] == ["inferq", "flower"]
    assert f"flower:{command[command.index('--port') + 1]}" in job_targets(scrape_job("flower"))
    assert int(command[command.index("--purge-offline-workers") + 1]) > 0
    assert ":" in env_of(flower)["INFERQ_FLOWER_BASIC_AUTH"], "user:password"
    assert "basic_auth" not in scrape_job("flower")

    (container,) = containers(named("Deployment", "inferq-flower"))
    args = container["args"]
    assert args[:2] == ["inferq", "flower"]
    assert int(args[args.index("--purge-offline-workers") + 1]) > 0
    env = {item["name"]: item for item in container.get("env", [])}
    ref = env["INFERQ_FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "inferq-flower"
    assert ":" in named("Secret", "inferq-flower")["stringData"][ref["key"]], "user:password"
    others = [
        source["secretRef"]["name"]
        for workload in workloads()
        if workload["metadata"]["name"] != "inferq-flower"
        for c in containers(workload)
        for source in c.get("envFrom", [])
        if "secretRef" in source
    ]
    assert "inferq-flower" not in others, "only Flower may read its login"


def test_prometheus_jobs_are_unique_and_rule_files_exist() -> None:
    names = [job["job_name"] for job in prometheus_config()["scrape_configs"]]
    assert len(names) == len(set(names))
    for rule_file in prometheus_config()["rule_files"]:
        assert (PROMETHEUS_DIR / rule_file).is_file(), rule_file
    duration_seconds(prometheus_config()["global"]["scrape_interval"])


def test_prometheus_targets_are_compose_services() -> None:
    for job in prometheus_config()["scrape_configs"]:
        for target in job_targets(job):
            host = target.rsplit(":", 1)[0]
            assert host == "localhost" or host in services(), target


@cache
def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_are_complete_and_their_expressions_parse() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in alert_rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        promql_parser.parse(rule["expr"])
        assert duration_seconds(rule["for"]) > 0, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def alerts_using(metric: str) -> list[dict[str, Any]]:
    return [rule for rule in alert_rules() if metric in metric_names(rule["expr"])]


def test_alerts_cover_backlog_growth_and_backlog_seconds_per_task_and_priority() -> None:
    growing = alerts_using("inferq_backlog_items")
    assert any("deriv(" in r["expr"] or "delta(" in r["expr"] for r in growing), growing
    slow = alerts_using("inferq_backlog_seconds")
    assert "interactive" in {p for r in slow for p in matcher_values(r["expr"], "priority")}


API_GAUGES = (
    "inferq_backlog_items",
    "inferq_backlog_seconds",
    "inferq_oldest_pending_seconds",
    "inferq_webhook_backlog",
    "inferq_drift_detected",
)


def aggregations_over(expr: str, metric: str) -> list[str]:
    """The aggregation operators applied directly (through functions) to `metric`'s selector."""
    found: list[str] = []

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.AggregateExpr):
            inner = node.expr
            while isinstance(inner, promql_parser.Call):
                inner = inner.args[0]
            if isinstance(inner, promql_parser.MatrixSelector):
                inner = inner.vector_selector
            if isinstance(inner, promql_parser.VectorSelector) and inner.name == metric:
                found.append(str(node.op))
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


@pytest.mark.parametrize("metric", API_GAUGES)
def test_alerts_take_the_max_of_gauges_every_api_instance_reports(metric: str) -> None:
    """Each API instance computes the same value from PostgreSQL: a sum would multiply it."""
    rules = alerts_using(metric)
    assert rules, f"no alert watches {metric}"
    for rule in rules:
        operators = aggregations_over(rule["expr"], metric)
        assert operators, f"{rule['alert']}: {metric} is not aggregated across API instances"
        assert all(op == "max" for op in operators), f"{rule['alert']}: {operators}"
        assert not matcher_values(rule["expr"], "queue"), "backlog gauges have no queue label"


def test_alerts_cover_degraded_share_and_failure_rate() -> None:
    finished = alerts_using("inferq_items_finished_total")
    assert any("primary" in matcher_values(r["expr"], "tier") for r in finished), "degraded"
    assert any("failed" in matcher_values(r["expr"], "outcome") for r in finished), "failures"


def test_alerts_cover_given_up_webhooks_and_kafka_lag_per_topic() -> None:
    deliveries = alerts_using("inferq_webhook_deliveries_total")
    assert any("failed" in matcher_values(r["expr"], "outcome") for r in deliveries)
    (lag,) = alerts_using("inferq_kafka_consumer_lag")
    assert "by (topic)" in lag["expr"].replace("  ", " "), lag["expr"]


def test_worker_down_alerts_watch_jobs_that_are_scraped() -> None:
    jobs = {job["job_name"] for job in prometheus_config()["scrape_configs"]}
    watched = {j for r in alerts_using("up") for j in matcher_values(r["expr"], "job")}
    assert "inferq-worker" in watched
    assert watched <= jobs, f"alerts watch unknown jobs {watched - jobs}"


@cache
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def grafana_to_promql(expr: str) -> str:
    """Grafana's interval macros are not PromQL: substitute what Grafana would."""
    return re.sub(r"\$__(rate_)?interval|\$__range", "5m", expr)


def test_dashboard_queries_parse_and_panels_are_laid_out() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels) >= 4
    variables = {v["name"] for v in board["templating"]["list"]}
    for panel in panels:
        assert panel["datasource"]["uid"].strip("${}") in variables, panel["title"]
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel["targets"]:
            promql_parser.parse(grafana_to_promql(target["expr"]))
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["definition"].startswith("label_values(")


def test_dashboard_panels_do_not_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_dashboard_shows_every_operating_signal() -> None:
    used = {
        name
        for panel in dashboard()["panels"]
        for target in panel["targets"]
        for name in metric_names(grafana_to_promql(target["expr"]))
    }
    expected = {
        "inferq_backlog_items",
        "inferq_backlog_seconds",
        "inferq_oldest_pending_seconds",
        "inferq_queue_messages",
        "inferq_items_finished_total",
        "inferq_batch_seconds_bucket",
        "inferq_inference_seconds_bucket",
        "inferq_model_confidence_bucket",
        "inferq_padding_ratio_bucket",
        "inferq_model_seconds_total",
        "inferq_worker_busy_seconds_total",
        "inferq_drift_score",
        "inferq_drift_detected",
        "inferq_webhook_deliveries_total",
        "inferq_webhook_backlog",
        "inferq_kafka_consumer_lag",
        "inferq_rate_limited_total",
        "inferq_quota_refused_total",
    }
    assert expected <= used, expected - used


def test_dashboard_backlog_panels_filter_by_task_and_priority_not_queue() -> None:
    variables = {v["name"] for v in dashboard()["templating"]["list"]}
    assert {"task", "priority"} <= variables and "queue" not in variables
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            expr = grafana_to_promql(target["expr"])
            if "inferq_backlog_items" in metric_names(expr):
                assert not matcher_values(expr, "queue"), panel["title"]


def configured_data_dir() -> Path:
    (config,) = [doc for _, doc in k8s_documents() if doc["kind"] == "ConfigMap"]
    return Path(config["data"]["INFERQ_DATA_DIR"])


@pytest.mark.parametrize("name", ["inferq-worker", "inferq-worker-gpu", "inferq-worker-langid"])
def test_inference_workers_mount_the_model_store_where_rollouts_look(name: str) -> None:
    """A rollout names trained versions that workers load from data_dir/models (the model
    store, core.inference.versions): the shared volume must sit exactly there."""
    from core.inference.versions import models_root

    deployment = named("Deployment", name)
    (worker,) = containers(deployment)
    mounts = {m["mountPath"]: m for m in worker["volumeMounts"]}
    store = mounts[str(models_root(configured_data_dir()))]
    assert store["readOnly"] is True
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[store["name"]]["persistentVolumeClaim"]["claimName"]
    (pvc,) = [d for d in kind("PersistentVolumeClaim") if d["metadata"]["name"] == claim]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]


@pytest.mark.parametrize("name", ["worker", "gpu-worker", "worker-langid"])
def test_compose_inference_workers_share_the_model_store(name: str) -> None:
    from core.inference.versions import models_root

    service = services()[name]
    store = str(models_root(Path(env_of(service)["INFERQ_DATA_DIR"])))
    assert f"models:{store}" in service["volumes"]
    assert "models" in compose()["volumes"]


# --------------------------------------------------------------------------------------------
# Tasks with workers of their own (INFERQ_TASK_QUEUES, `inferq worker --tasks`)
# --------------------------------------------------------------------------------------------


def option(args: list[str], name: str) -> list[str]:
    return args[args.index(name) + 1].split(",") if name in args else []


def consumed_queues(args: list[str], settings: Any) -> set[str]:
    """What `inferq worker ARGS` consumes, computed by the code the command runs."""
    from core.broker import queues_for_tasks

    if "--tasks" in args:
        return set(queues_for_tasks(option(args, "--tasks"), settings))
    return set(option(args, "--queues") or ["interactive", "bulk", "maintenance"])


def routed_queues(task: str, settings: Any) -> set[str]:
    """Where the API, the sweeper and retries send `task`'s run-items (core.broker.run_queue)."""
    from core.broker import QUEUES, run_queue

    return {run_queue(priority, task, settings) for priority in QUEUES}


def k8s_settings() -> Any:
    from core.config import Settings

    (config,) = [doc for _, doc in k8s_documents() if doc["kind"] == "ConfigMap"]
    return Settings(task_queues=json.loads(config["data"].get("INFERQ_TASK_QUEUES", "[]")))


def compose_settings() -> Any:
    from core.config import Settings

    return Settings(
        task_queues=json.loads(compose()["x-inferq-env"].get("INFERQ_TASK_QUEUES", "[]"))
    )


def k8s_inference_workers() -> dict[str, list[str]]:
    """Deployment name -> args of each `inferq worker` that runs models."""
    found = {}
    for deployment in kind("Deployment"):
        for container in containers(deployment):
            args = [str(a) for a in container.get("args", [])]
            if args[:2] == ["inferq", "worker"] and (
                "--tasks" in args or {"interactive", "bulk"} & set(option(args, "--queues"))
            ):
                found[deployment["metadata"]["name"]] = args
    return found


def compose_inference_workers() -> dict[str, list[str]]:
    found = {}
    for name, service in services().items():
        args = command_of(service)
        if args[:2] == ["inferq", "worker"] and (
            "--tasks" in args or {"interactive", "bulk"} & set(option(args, "--queues"))
        ):
            found[name] = args
    return found


def test_langid_has_queues_of_its_own_in_both_deployments() -> None:
    assert k8s_settings().task_queues == ["langid"]
    assert compose_settings().task_queues == ["langid"]


@pytest.mark.parametrize("where", ["k8s", "compose"])
def test_every_task_is_consumed_where_its_work_is_routed_and_only_its_workers_take_it(
    where: str,
) -> None:
    """Each task's queues (computed by run_queue) are consumed by some worker; a dedicated
    task's only by the workers started with `--tasks` naming it, never by a general worker."""
    from core.inference.registry import task_names

    settings = k8s_settings() if where == "k8s" else compose_settings()
    workers = k8s_inference_workers() if where == "k8s" else compose_inference_workers()
    consumed = {name: consumed_queues(args, settings) for name, args in workers.items()}
    for task in sorted(task_names()):
        routed = routed_queues(task, settings)
        takers = sorted(name for name, queues in consumed.items() if routed & queues)
        assert takers, f"{where}: nobody consumes {task}'s queues {sorted(routed)}"
        for name in takers:
            assert routed <= consumed[name], f"{name} takes only part of {sorted(routed)}"
        if task in settings.task_queues:
            assert all(task in option(workers[name], "--tasks") for name in takers), (
                f"{where}: {task} has queues of its own, yet {takers} consume them"
            )
            assert any("--tasks" in workers[name] for name in takers)


def test_the_langid_deployment_consumes_exactly_the_queues_langid_is_routed_to() -> None:
    settings = k8s_settings()
    (worker,) = containers(named("Deployment", "inferq-worker-langid"))
    assert option(worker["args"], "--tasks") == ["langid"]
    assert "--queues" not in worker["args"], "the command refuses --tasks with --queues"
    assert consumed_queues(worker["args"], settings) == routed_queues("langid", settings)
    assert routed_queues("langid", settings) == {"interactive.langid", "bulk.langid"}
    general = consumed_queues(k8s_inference_workers()["inferq-worker"], settings)
    assert not general & routed_queues("langid", settings)


def test_the_langid_workers_scale_on_langid_queues_and_backlog_alone() -> None:
    settings = k8s_settings()
    so = named("ScaledObject", "inferq-worker-langid")
    assert so["spec"]["scaleTargetRef"]["name"] == "inferq-worker-langid"
    lists = {t["listName"] for t in triggers_of("inferq-worker-langid", "redis")}
    assert lists == routed_queues("langid", settings)
    for priority, target in (("interactive", 30.0), ("bulk", 600.0)):
        trigger = backlog_seconds_trigger("inferq-worker-langid", priority)
        assert matcher_values(trigger["query"], "task") == {"langid"}
        assert float(trigger["threshold"]) == target


def task_exclusions(expr: str) -> set[str]:
    return {
        m.value
        for s in selectors(expr)
        for m in s.matchers.matchers
        if m.name == "task" and m.op == promql_parser.MatchOp.NotEqual
    }


@pytest.mark.parametrize(
    ("name", "priorities"),
    [("inferq-worker", ("interactive", "bulk")), ("inferq-worker-gpu", ("bulk",))],
)
def test_general_workers_do_not_scale_on_the_backlog_of_tasks_with_workers_of_their_own(
    name: str, priorities: tuple[str, ...]
) -> None:
    dedicated = set(k8s_settings().task_queues)
    for priority in priorities:
        query = backlog_seconds_trigger(name, priority)["query"]
        assert task_exclusions(query) == dedicated, query
    lists = {t["listName"] for t in triggers_of(name, "redis")}
    assert not lists & {q for task in dedicated for q in routed_queues(task, k8s_settings())}
