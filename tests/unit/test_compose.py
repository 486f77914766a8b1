"""The team deployment (docker-compose.yaml, docker/Dockerfile) is wired as documented.

Docker cannot run here, so these tests read the files: services, shared environment, the Spark
connection, the one shared data volume, bind mounts, Spark commands, published ports, health
checks, and the Dockerfile's install order. When `docker compose` is available the file is also
validated by Compose itself.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
INIT_SCRIPT = ROOT / "docker" / "airflow-init.sh"

AIRFLOW_SERVICES = [
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-init",
]
SPARK_SERVICES = ["spark-master", "spark-worker"]
LONG_RUNNING = [
    "postgres",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    *SPARK_SERVICES,
]
PROJECT_DIRS = ["dags", "plugins", "include", "spark_jobs", "configs"]
DATA_VOLUME = "anomaly-data"
MASTER_URL = "spark://spark-master:7077"

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose-style ${VAR:-default} with the defaults (the tests must not depend on a .env)."""
    return _VAR.sub(lambda m: m.group(2) or "", value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())  # safe_load resolves anchors and << merges


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def executor(compose) -> str:
    return compose["x-airflow-common"]["environment"]["AIRFLOW__CORE__EXECUTOR"]


def airflow_services(compose) -> list[str]:
    extra = ["airflow-worker"] if executor(compose) == "CeleryExecutor" else []
    return AIRFLOW_SERVICES + extra


def env_of(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):  # KEY=VALUE list form
        env = dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def mounts_of(service: dict) -> list[dict]:
    """Volumes in short or long syntax as {type, source, target, read_only}."""
    result = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            parts = interpolate(entry).split(":")
            source, target = parts[0], parts[1]
            mode = parts[2] if len(parts) > 2 else "rw"
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            result.append(
                {"type": kind, "source": source, "target": target, "read_only": "ro" in mode.split(",")}
            )
        else:
            result.append(
                {
                    "type": entry.get("type", "volume"),
                    "source": entry.get("source"),
                    "target": entry["target"],
                    "read_only": bool(entry.get("read_only")),
                }
            )
    return result


def full_command(service: dict) -> list[str]:
    def as_list(value):
        if value is None:
            return []
        return value.split() if isinstance(value, str) else [str(v) for v in value]

    return as_list(service.get("entrypoint")) + as_list(service.get("command"))


def published_host_ips(port_entry) -> str | None:
    """The host IP a `ports:` entry binds to (None when it binds to every interface)."""
    if isinstance(port_entry, dict):
        return port_entry.get("host_ip")
    text = interpolate(str(port_entry))
    if text.startswith("["):  # [::1]:8080:8080
        return text[1 : text.index("]")]
    parts = text.split(":")
    return parts[0] if len(parts) == 3 else None


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            lines.append(current)
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


# --- services -------------------------------------------------------------------------------


def test_required_services_exist(compose, services):
    required = ["postgres", *airflow_services(compose), *SPARK_SERVICES]
    assert not [name for name in required if name not in services], sorted(services)


def test_executor_is_set_and_its_services_exist(compose, services):
    chosen = executor(compose)
    assert chosen in {"LocalExecutor", "CeleryExecutor"}, chosen
    if chosen == "CeleryExecutor":
        assert {"redis", "airflow-worker"} <= set(services)
    for name in airflow_services(compose):
        assert env_of(services[name])["AIRFLOW__CORE__EXECUTOR"] == chosen, name


def test_api_server_command_and_port(services):
    api = services["airflow-apiserver"]
    assert full_command(api) == ["api-server"]
    assert any(interpolate(str(p)).endswith(":8080") for p in api["ports"]), api["ports"]
    for name, cmd in {
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-triggerer": "triggerer",
    }.items():
        assert full_command(services[name]) == [cmd], name


def test_postgres_is_16_with_healthcheck_and_named_volume(compose, services):
    pg = services["postgres"]
    assert re.fullmatch(r"postgres:16(\.\d+)?(-\w+)?", pg["image"]), pg["image"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    data = [m for m in mounts_of(pg) if m["target"] == "/var/lib/postgresql/data"]
    assert data and data[0]["type"] == "volume" and data[0]["source"] in compose["volumes"]


def test_every_project_service_uses_the_one_built_image(services):
    built = {name: s for name, s in services.items() if name != "postgres"}
    images = {interpolate(s["image"]) for s in built.values()}
    builds = {(s["build"]["context"], s["build"]["dockerfile"]) for s in built.values()}
    assert len(images) == 1 and builds == {(".", "docker/Dockerfile")}, (images, builds)


# --- Airflow environment --------------------------------------------------------------------


def test_airflow_services_share_the_common_env(compose, services):
    common = compose["x-airflow-common"]["environment"]
    assert common, "x-airflow-common has no environment"
    for name in airflow_services(compose):
        env = env_of(services[name])
        differing = {k: env.get(k) for k, v in common.items() if env.get(k) != str(v)}
        assert not differing, f"{name} lacks or changes common env: {differing}"


def test_common_env_values(compose, services):
    env = env_of(compose["x-airflow-common"])
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    assert "@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    # Secrets come from the environment (.env) with a default, never a literal only.
    for key in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET"):
        assert _VAR.fullmatch(env[key]), f"{key} should be ${{VAR:-default}}: {env[key]!r}"
    # The DAGs folder and PYTHONPATH point at the mounted project directories.
    targets = {
        m["source"].lstrip("./"): m["target"]
        for m in mounts_of(services["airflow-scheduler"])
        if m["type"] == "bind"
    }
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == targets["dags"]
    assert targets["include"] in env["PYTHONPATH"].split(":")


def test_spark_connection_is_json_for_the_standalone_master(compose):
    raw = env_of(compose["x-airflow-common"])["AIRFLOW_CONN_SPARK_DEFAULT"]
    conn = json.loads(raw)
    assert conn["conn_type"] == "spark"
    assert conn["host"] == "spark://spark-master"
    assert conn["port"] == 7077
    assert conn["extra"]["deploy-mode"] == "client"


def test_pinned_spark_provider_resolves_the_connection(compose, tmp_path):
    """The real hook turns the env connection into the master URL given to spark-submit."""
    pytest.importorskip("airflow.providers.apache.spark")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW_CONN_SPARK_DEFAULT": env_of(compose["x-airflow-common"])["AIRFLOW_CONN_SPARK_DEFAULT"],
    }
    code = (
        "import json\n"
        "from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook\n"
        "c = SparkSubmitHook(conn_id='spark_default')._connection\n"
        "print('CONN=' + json.dumps({'master': c['master'], 'deploy_mode': c['deploy_mode']}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("CONN="))
    assert json.loads(line[5:]) == {"master": MASTER_URL, "deploy_mode": "client"}


# --- volumes and mounts ---------------------------------------------------------------------


def test_one_shared_data_volume_at_the_same_path_everywhere(compose, services):
    assert DATA_VOLUME in compose["volumes"]
    paths = {}
    for name in [*airflow_services(compose), *SPARK_SERVICES]:
        mounts = [m for m in mounts_of(services[name]) if m["source"] == DATA_VOLUME]
        assert len(mounts) == 1 and not mounts[0]["read_only"], f"{name}: {mounts}"
        paths[name] = mounts[0]["target"]
    assert len(set(paths.values())) == 1, paths
    data_dir = next(iter(paths.values()))
    for name in [*airflow_services(compose), *SPARK_SERVICES]:
        assert env_of(services[name])["ANOMALY_DATA_DIR"] == data_dir, name


def test_project_code_is_mounted_read_only_at_the_same_paths(compose, services):
    seen = {}
    for name in [*airflow_services(compose), *SPARK_SERVICES]:
        binds = {
            m["source"].lstrip("./").rstrip("/"): m for m in mounts_of(services[name]) if m["type"] == "bind"
        }
        for directory in PROJECT_DIRS:
            assert directory in binds, f"{name} does not mount ./{directory}"
            assert binds[directory]["read_only"], f"{name}: ./{directory} is writable"
            seen.setdefault(directory, set()).add(binds[directory]["target"])
    assert all(len(targets) == 1 for targets in seen.values()), seen


def test_bind_mount_sources_exist_in_the_repo(services):
    missing = [
        (name, m["source"])
        for name, s in services.items()
        for m in mounts_of(s)
        if m["type"] == "bind" and not (ROOT / m["source"]).exists()
    ]
    assert not missing, missing


def test_named_volumes_are_declared(compose, services):
    used = {m["source"] for s in services.values() for m in mounts_of(s) if m["type"] == "volume"}
    assert used <= set(compose["volumes"]), used - set(compose["volumes"])


# --- Spark ----------------------------------------------------------------------------------


def test_spark_master_command(services):
    cmd = full_command(services["spark-master"])
    i = cmd.index("spark-class")
    assert cmd[i + 1] == "org.apache.spark.deploy.master.Master"
    args = cmd[i + 2 :]
    assert args[args.index("--host") + 1] == "spark-master"
    assert args[args.index("--port") + 1] == "7077"
    assert args[args.index("--webui-port") + 1] == "8081"
    assert "airflow" not in cmd, "the Spark services must override the airflow entrypoint"


def test_spark_worker_command_and_sizing(services):
    worker = services["spark-worker"]
    cmd = full_command(worker)
    i = cmd.index("spark-class")
    assert cmd[i + 1 :] == ["org.apache.spark.deploy.worker.Worker", MASTER_URL]
    assert "airflow" not in cmd
    env = env_of(worker)
    assert re.fullmatch(r"\d+[mg]", interpolate(env["SPARK_WORKER_MEMORY"]))
    assert re.fullmatch(r"\d+", interpolate(env["SPARK_WORKER_CORES"]))
    assert worker["depends_on"]["spark-master"]["condition"] == "service_healthy"


# --- ports, health, startup order -----------------------------------------------------------


def test_every_published_port_is_bound_to_loopback(services):
    published = [(name, p) for name, s in services.items() for p in s.get("ports") or []]
    assert published, "nothing is published"
    assert all(published_host_ips(p) == "127.0.0.1" for _, p in published), published
    assert any(interpolate(str(p)).endswith(":8081") for _, p in published), "Spark master UI"


@pytest.mark.parametrize(
    "entry", ["8080:8080", "0.0.0.0:8080:8080", "8080", {"target": 8080, "published": 8080}]
)
def test_port_check_rejects_entries_open_to_the_network(entry):
    assert published_host_ips(entry) != "127.0.0.1"


def test_healthchecks(services):
    def test_of(name):
        return " ".join(services[name]["healthcheck"]["test"])

    assert "/api/v2/monitor/health" in test_of("airflow-apiserver")
    assert "8974/health" in test_of("airflow-scheduler")
    assert "pg_isready" in test_of("postgres")
    assert "DagProcessorJob" in test_of("airflow-dag-processor")
    assert "TriggererJob" in test_of("airflow-triggerer")
    assert services["airflow-scheduler"]["environment"]["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"


def test_startup_order_and_restart_policy(compose, services):
    for name in airflow_services(compose):
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy", name
        if name != "airflow-init":
            assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
    for name in LONG_RUNNING:
        assert services[name].get("restart") == "always", name
    assert services["airflow-init"].get("restart") in (None, "no")


def test_airflow_init_migrates_and_sets_the_login(services):
    init = services["airflow-init"]
    cmd = full_command(init)
    assert cmd[-1] == "/usr/local/bin/airflow-init", cmd
    assert "COPY --chmod=0755 docker/airflow-init.sh /usr/local/bin/airflow-init" in DOCKERFILE.read_text()
    script = INIT_SCRIPT.read_text()
    assert "airflow db migrate" in script
    assert "SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in script
    assert {"_AIRFLOW_WWW_USER_USERNAME", "_AIRFLOW_WWW_USER_PASSWORD"} <= set(env_of(init))
    # The passwords file it writes is on a volume the api-server mounts too.
    passwords = env_of(init)["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    api_targets = [m["target"] for m in mounts_of(services["airflow-apiserver"])]
    init_targets = [m["target"] for m in mounts_of(init)]
    shared = [t for t in api_targets if t in init_targets and passwords.startswith(t + "/")]
    assert shared, (passwords, api_targets)
    syntax = subprocess.run(["bash", "-n", str(INIT_SCRIPT)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


# --- image ----------------------------------------------------------------------------------


def test_dockerfile_base_java_and_user():
    steps = dockerfile_instructions()
    assert steps[0] == ("FROM", "python:3.11-slim-bookworm")
    runs = " ".join(args for op, args in steps if op == "RUN")
    assert "openjdk-17-jre-headless" in runs and "procps" in runs
    env = " ".join(args for op, args in steps if op == "ENV")
    for name in ("JAVA_HOME=", "SPARK_HOME=", "PYTHONPATH="):
        assert name in env, name
    assert re.search(r"SPARK_HOME=\S+/site-packages/pyspark\b", env)
    user = [args for op, args in steps if op == "USER"]
    assert user and user[-1] not in ("root", "0"), user
    assert re.search(r"--uid \"?\$\{AIRFLOW_UID\}\"?", runs) and "AIRFLOW_UID=50000" in DOCKERFILE.read_text()
    entrypoint = json.loads([args for op, args in steps if op == "ENTRYPOINT"][-1])
    assert entrypoint[-1] == "airflow", entrypoint


def test_dockerfile_installs_requirements_like_install_sh():
    steps = dockerfile_instructions()
    commands = [c.strip() for op, args in steps if op == "RUN" for c in args.split("&&")]
    installs = [c for c in commands if re.search(r"\b(uv )?pip install\b", c)]
    requirement_installs = [c for c in installs if "requirements.txt" in c]
    assert requirement_installs, installs
    assert any("-r /tmp/requirements/requirements.txt" in c for c in requirement_installs)
    assert "COPY requirements.txt" in DOCKERFILE.read_text()
    last = installs[-1]
    assert "--no-deps" in last and "--reinstall-package pyspark" in last, (
        f"pyspark is not reinstalled last: {last}"
    )
    uv_pin = re.search(r'"uv==([\d.]+)"', (ROOT / "scripts" / "install.sh").read_text()).group(1)
    assert f"UV_VERSION={uv_pin}" in DOCKERFILE.read_text(), "uv pin differs from scripts/install.sh"
    extra = ROOT / "docker" / "requirements-postgres.txt"
    pins = [ln for ln in extra.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+_-]+", ln) for ln in pins), pins


def test_dockerfile_copies_exist_and_are_not_ignored():
    ignored = {
        ln.strip().rstrip("/")
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    for line in (".venv", "runs", "reports", "var", ".git"):
        assert line in ignored, line
    assert any("__pycache__" in line for line in ignored)
    for op, args in dockerfile_instructions():
        if op != "COPY":
            continue
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source.split("/")[0] not in ignored, f"{source} is excluded by .dockerignore"


# --- Compose itself -------------------------------------------------------------------------


def _compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_docker_compose_config_validates():
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no working `docker compose` (docker binary or its compose plugin is missing)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    out = subprocess.run(
        [*cli, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
