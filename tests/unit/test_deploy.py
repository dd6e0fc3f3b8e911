"""The deploy files (deploy/) refer only to things that exist: images pinned to a tag,
the port the configuration serves on, environment variables relaygate reads, files in
the repository, health paths the gateway serves, metrics it exports, CLI commands it has.

No container engine runs here: the files are parsed (YAML; the Dockerfile and nginx
configuration by small line parsers) and checked against relaygate itself.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from relaygate.api.openapi import OPERATIONS
from relaygate.cli import main
from relaygate.observability.metrics import Metrics
from relaygate.observability.ops_listener import OPS_PATHS
from relaygate.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONFIG = DEPLOY / "relaygate.yaml"
K8S = DEPLOY / "k8s"
SECRET_PLACEHOLDER = "rg_placeholder-secret-value-0123456789abcdefghijklm"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(DEPLOY / "compose.yaml")
    return data


def k8s_objects() -> dict[str, dict[str, Any]]:
    """Every object of the kustomization and the example Secret, by kind."""
    kustomization = load_yaml(K8S / "kustomization.yaml")
    objects: dict[str, dict[str, Any]] = {}
    for name in [*kustomization["resources"], "secret.example.yaml"]:
        for doc in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")):
            assert doc["kind"] not in objects, f"two {doc['kind']} objects"
            objects[doc["kind"]] = doc
    return objects


def container() -> dict[str, Any]:
    pod = k8s_objects()["Deployment"]["spec"]["template"]["spec"]
    (only,) = pod["containers"]
    result: dict[str, Any] = only
    return result


def config() -> Settings:
    return load_settings(CONFIG, environ={})


def ops_port(settings: Settings) -> int:
    """The operations listener's port: the deploy files turn it on."""
    address = settings.ops.address
    assert address is not None, "deploy/relaygate.yaml sets no ops.listen"
    assert address[1] != settings.port
    return address[1]


# --- the Dockerfile -----------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (DEPLOY / "Dockerfile").read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = (pending + stripped).strip()
        pending = ""
        keyword, _, args = whole.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def instruction_args(keyword: str) -> list[str]:
    return [args for kw, args in dockerfile() if kw == keyword]


def exec_form(args: str) -> list[str]:
    parsed = json.loads(args)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), args
    return parsed


def pinned(image: str) -> bool:
    """``name:tag`` with a versioned tag (not ``latest``), or a digest."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and any(c.isdigit() for c in tag)


def test_the_dockerfile_builds_from_pinned_images_and_existing_paths() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    froms = instruction_args("FROM")
    assert froms, "no FROM"
    stages = set()
    for args in froms:
        image, *rest = args.split()
        assert pinned(image), image
        if rest:
            assert rest[0].upper() == "AS"
            stages.add(rest[1])
    for args in instruction_args("COPY"):
        words = [w for w in args.split() if not w.startswith("--")]
        if "--from=" in args:
            assert args.split("--from=")[1].split()[0] in stages
            continue
        for source in words[:-1]:  # the build context is the repository's root
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert source not in ignored, f"COPY {source}: excluded by .dockerignore"
    # the sources the build copies are what the package needs
    installs = [args for args in instruction_args("RUN") if "pip install" in args]
    assert any(re.search(r"pip install '?\.(\[[a-z,]+\])?'?(\s|$)", a) for a in installs)
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    for args in installs:  # an extra the image asks for exists
        for named in re.findall(r"\.\[([a-z,]+)\]", args):
            assert set(named.split(",")) <= extras, args
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    copied = " ".join(instruction_args("COPY"))
    assert pyproject["project"]["readme"] in copied and "pyproject.toml" in copied


def test_the_image_runs_relaygate_as_a_non_root_user_with_a_health_check() -> None:
    (user,) = instruction_args("USER")
    assert user not in ("root", "0")
    uid = re.search(r"--uid (\d+)", " ".join(instruction_args("RUN")))
    assert uid is not None and int(uid.group(1)) > 0
    (entrypoint,) = instruction_args("ENTRYPOINT")
    (cmd,) = instruction_args("CMD")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert exec_form(entrypoint) == ["relaygate"]
    # the data folder volumes are mounted on exists in the image, owned by that user
    (workdir,) = instruction_args("WORKDIR")[-1:]
    gateway = compose()["services"]["relaygate"]
    data = [v.split(":")[1] for v in gateway["volumes"] if not v.startswith(".")]
    assert data == [f"{workdir}/data"]
    assert f"install -d -o {user} -g {user} {workdir}/data" in " ".join(instruction_args("RUN"))
    assert "relaygate" in pyproject["project"]["scripts"]
    assert_cli_command(exec_form(cmd))
    (healthcheck,) = instruction_args("HEALTHCHECK")
    assert "/health'" in healthcheck
    probe = exec_form(healthcheck.split(" CMD ", 1)[1])
    assert probe[:2] == ["python", "-c"]
    compile(probe[2], "HEALTHCHECK", "exec")  # the probe is valid Python
    # it probes the operations listener's port, read from the variable the image sets
    assert "os.environ.get('RELAYGATE_OPS__LISTEN')" in probe[2]
    assert "RELAYGATE_OPS__LISTEN=" in " ".join(instruction_args("ENV"))
    assert_served("/health")
    assert "/health" in OPS_PATHS


def test_the_image_environment_is_settings_relaygate_reads() -> None:
    env: dict[str, str] = {}
    for args in instruction_args("ENV"):
        for pair in shlex.split(args):
            name, _, value = pair.partition("=")
            env[name] = value
    ours = {k: v for k, v in env.items() if k.startswith("RELAYGATE_")}
    assert ours, "the image sets no RELAYGATE_* defaults"
    settings = load_settings(environ=ours)
    assert settings.host == "0.0.0.0"
    (exposed,) = instruction_args("EXPOSE")
    assert [int(port) for port in exposed.split()] == [settings.port, ops_port(settings)]
    assert settings.port == config().port and ops_port(settings) == ops_port(config())
    assert "/opt/relaygate/bin" in env["PATH"]


# --- docker compose -----------------------------------------------------------------


def interpolated(value: str) -> str:
    """A compose value with ``${VAR...}`` replaced by a stand-in, as compose would."""
    return re.sub(r"\$\{[A-Z_][A-Z0-9_]*(?::?[-?][^}]*)?\}", SECRET_PLACEHOLDER, value)


def relaygate_environ(env: dict[str, str]) -> dict[str, str]:
    return {k: interpolated(str(v)) for k, v in env.items()}


def test_every_compose_image_is_pinned_and_every_build_exists() -> None:
    services = compose()["services"]
    for name, service in services.items():
        assert pinned(service["image"]), f"{name}: {service['image']}"
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
            assert context == ROOT


def test_compose_mounts_files_that_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
            else:
                assert source in compose()["volumes"], f"{name}: volume {source} not declared"


def test_compose_runs_two_replicas_of_the_configured_gateway() -> None:
    services = compose()["services"]
    gateway = services["relaygate"]
    assert gateway["deploy"]["replicas"] == 2
    assert_cli_command(gateway["command"])
    assert_cli_command(services["migrate"]["command"])
    env = relaygate_environ(gateway["environment"])
    assert env == relaygate_environ(services["migrate"]["environment"])
    # the file named by RELAYGATE_CONFIG is the one mounted there
    mounts = dict(reversed(v.split(":")[:2]) for v in gateway["volumes"])
    assert mounts[env["RELAYGATE_CONFIG"]] == "./relaygate.yaml"
    settings = settings_from(env)
    assert settings.database_url.startswith("postgresql+asyncpg://relaygate:")
    assert settings.database_url.endswith("@postgres:5432/relaygate")
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.admin_key == SECRET_PLACEHOLDER
    assert settings.workers > 1 and settings.redis_url  # replicas share their counters
    # the database and Redis named are services of this file, on their own ports
    assert "postgres" in services and "redis" in services and "ollama" in services
    grace = gateway["stop_grace_period"]
    assert int(grace.rstrip("s")) > settings.graceful_shutdown_seconds


def settings_from(env: dict[str, str]) -> Settings:
    """The settings a replica builds from this environment (the config file it names,
    with ``${VAR}`` taken from the same environment): every RELAYGATE_* name must be one
    relaygate reads (an unknown one is refused), and every other must be used."""
    path = env["RELAYGATE_CONFIG"]
    assert path.endswith("/relaygate.yaml")
    settings = load_settings(
        CONFIG, environ={k: v for k, v in env.items() if k != "RELAYGATE_CONFIG"}
    )
    text = CONFIG.read_text(encoding="utf-8")
    for name in env:
        if not name.startswith("RELAYGATE_"):
            assert "${" + name in text, f"{name} is set but deploy/relaygate.yaml does not use it"
    return settings


def test_compose_health_checks_probe_paths_the_gateway_serves() -> None:
    services = compose()["services"]
    port = config().port
    probe = " ".join(services["relaygate"]["healthcheck"]["test"])
    # on the operations listener: the main port answers 404 for /ready when it is on
    ops = ops_port(config())
    assert f"http://127.0.0.1:{ops}/ready" in probe and f":{port}/" not in probe
    assert str(ops) in services["relaygate"]["expose"]
    assert_served("/ready")
    assert "/ready" in OPS_PATHS
    assert services["front"]["depends_on"]["relaygate"]["condition"] == "service_healthy"
    assert services["relaygate"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    for name in ("postgres", "redis", "front"):
        assert services[name]["healthcheck"]["test"][0] == "CMD"
    assert "/health" in " ".join(services["front"]["healthcheck"]["test"])


# --- nginx ----------------------------------------------------------------------------


def nginx_directives(path: Path) -> list[list[str]]:
    """Each directive as its words (comments dropped; blocks flattened)."""
    text = re.sub(r"#[^\n]*", "", path.read_text(encoding="utf-8"))
    return [stmt.split() for stmt in re.split(r"[;{}]", text) if stmt.strip()]


def nginx_values(path: Path, name: str) -> list[list[str]]:
    return [d[1:] for d in nginx_directives(path) if d[0] == name]


def test_nginx_streams_without_buffering_and_with_long_reads() -> None:
    locations = DEPLOY / "nginx" / "relaygate-locations.conf"
    assert nginx_values(locations, "proxy_buffering") == [["off"]]
    assert nginx_values(locations, "proxy_request_buffering") == [["off"]]
    (read,) = nginx_values(locations, "proxy_read_timeout")
    assert int(read[0].rstrip("s")) >= 600
    assert nginx_values(locations, "proxy_http_version") == [["1.1"]]
    assert ["http://relaygate"] in nginx_values(locations, "proxy_pass")
    main_conf = DEPLOY / "nginx" / "nginx.conf"
    assert nginx_values(main_conf, "gzip") == [["off"]]


def test_nginx_sends_to_the_replicas_port_and_includes_mounted_files() -> None:
    main_conf = DEPLOY / "nginx" / "nginx.conf"
    assert nginx_values(main_conf, "upstream") == [["relaygate"]]
    (server,) = [v for v in nginx_values(main_conf, "server") if v]
    assert server[0] == f"relaygate:{config().port}"
    assert "relaygate" in compose()["services"]
    front = compose()["services"]["front"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in front["volumes"]}
    for (include,) in nginx_values(main_conf, "include"):
        folder, _, pattern = include.rpartition("/")
        if "*" in pattern:
            assert folder in mounted and (DEPLOY / mounted[folder]).is_dir()
        else:
            assert include in mounted and (DEPLOY / mounted[include]).is_file()
    tls = DEPLOY / "nginx" / "tls.conf.example"
    for (include,) in nginx_values(tls, "include"):
        assert include in mounted
    listens = {v[0] for v in nginx_values(main_conf, "listen") + nginx_values(tls, "listen")}
    published = {p.split(":")[-1] for p in front["ports"]}
    assert listens == published == {"80", "443"}


# --- Kubernetes -----------------------------------------------------------------------


def test_the_kustomization_lists_files_that_exist() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    for name in kustomization["resources"]:
        assert (K8S / name).is_file(), name
    kinds = set(k8s_objects())
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "Secret"} <= kinds


def deployment_env() -> dict[str, str]:
    """The container's environment, with the Secret's values stood in for."""
    objects = k8s_objects()
    secret_keys = set(objects["Secret"]["stringData"])
    env: dict[str, str] = {}
    for var in container()["env"]:
        if "valueFrom" in var:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] == objects["Secret"]["metadata"]["name"]
            assert ref["key"] in secret_keys
            env[var["name"]] = (
                "postgresql+asyncpg://relaygate:pw@postgres:5432/relaygate"
                if ref["key"] == "database-url"
                else SECRET_PLACEHOLDER
            )
        else:
            env[var["name"]] = var["value"]
    return env


def test_the_deployment_probes_ready_and_health_on_the_ports_that_serve_them() -> None:
    c = container()
    settings = settings_from(deployment_env())
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == settings.port == config().port
    ops = settings.ops.address  # /metrics and /ready answer only there when it is set
    assert ops is not None and ports["ops"] == ops[1] != settings.port
    # the kubelet and Prometheus come from outside the pod ("" is the main host)
    assert (ops[0] or settings.host) == "0.0.0.0"
    # readiness and liveness on the listener that answers while the workers are busy
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "ops"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "ops"}
    assert c["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = c[probe]["httpGet"]
        assert get["port"] in ports
        assert_served(get["path"])
        assert get["port"] == "http" or get["path"] in OPS_PATHS
    assert pinned(c["image"])
    assert_cli_command(c["args"])
    deployment = k8s_objects()["Deployment"]
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > settings.graceful_shutdown_seconds
    uid = re.search(r"--uid (\d+)", " ".join(instruction_args("RUN")))
    assert uid is not None and pod["securityContext"]["runAsUser"] == int(uid.group(1))
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ops[1])
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_deployment_environment_is_settings_relaygate_reads() -> None:
    objects = k8s_objects()
    env = deployment_env()
    settings = settings_from(env)
    assert settings.admin_key == SECRET_PLACEHOLDER
    assert settings.database_url.startswith("postgresql+asyncpg://")
    # the config file is the ConfigMap's, mounted where RELAYGATE_CONFIG says
    mount = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    folder, _, filename = env["RELAYGATE_CONFIG"].rpartition("/")
    assert mount["config"] == folder
    (workdir,) = instruction_args("WORKDIR")[-1:]
    assert mount["data"] == f"{workdir}/data"  # the usage outbox, under a read-only root
    assert mount["tmp"] == "/tmp"  # the workers' metrics files
    volumes = {v["name"]: v for v in objects["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    assert filename in objects["ConfigMap"]["data"]


def test_the_configmap_holds_deploy_relaygate_yaml() -> None:
    data = k8s_objects()["ConfigMap"]["data"]
    assert data["relaygate.yaml"] == CONFIG.read_text(encoding="utf-8")


def test_the_service_pdb_and_ingress_select_the_deployment() -> None:
    objects = k8s_objects()
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert objects["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = objects["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in container()["ports"]}
    assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])
    pdb = objects["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert 0 < pdb["minAvailable"] < objects["Deployment"]["spec"]["replicas"]
    backend = objects["Ingress"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    annotations = objects["Ingress"]["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600


# --- relaygate config check on every configuration shipped ---------------------------


def config_check(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RELAYGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "relaygate", "config", "check", str(path)],
        capture_output=True, text=True, timeout=60, env={**clean, **env},
    )  # fmt: skip


def test_the_deploy_configuration_passes_config_check() -> None:
    env = relaygate_environ(compose()["services"]["relaygate"]["environment"])
    env.pop("RELAYGATE_CONFIG")
    result = config_check(CONFIG, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{CONFIG}: OK")
    assert "llama3.2:1b" in result.stdout and SECRET_PLACEHOLDER not in result.stdout
    # and alone, with no environment at all (the defaults name the compose services)
    assert config_check(CONFIG, {}).returncode == 0


# --- CLI commands and served paths ----------------------------------------------------


def assert_cli_command(args: list[str]) -> None:
    """``args`` (after ``relaygate``) name a command of relaygate's CLI."""
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--help"])
    assert exit_info.value.code == 0, args


def assert_served(path: str) -> None:
    assert ("GET", path) in OPERATIONS, f"relaygate does not serve GET {path}"


# --- Prometheus rules and the Grafana dashboard ---------------------------------------

PROMETHEUS_OWN = {"up"}  # series Prometheus itself records for each scrape
ALWAYS_LABELS = {"job", "instance"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported() -> dict[str, set[str]]:
    """Each series name relaygate's metrics expose -> its label names (the suffixes are
    prometheus-client's: ``_total`` for counters, ``_bucket``/``_count``/``_sum``)."""
    names: dict[str, set[str]] = {}
    for metric in vars(Metrics()).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        labels = set(metric._labelnames)
        for suffix in SUFFIXES[metric._type]:
            names[metric._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def promql_expressions() -> list[tuple[str, str]]:
    """(where, expression) for every alerting rule and dashboard query."""
    found: list[tuple[str, str]] = []
    for group in load_yaml(DEPLOY / "prometheus" / "alerts.yml")["groups"]:
        for rule in group["rules"]:
            found.append((f"alert {rule['alert']}", rule["expr"]))
    dashboard = json.loads((DEPLOY / "grafana" / "relaygate-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            found.append((f"panel {panel['title']!r}", target["expr"]))
    return found


IDENTIFIER = re.compile(r"(?<![\w.])([a-zA-Z_:][\w:]*)\b(?!\s*\()")
KEYWORDS = {"by", "without", "and", "or", "unless", "on", "ignoring", "bool", "offset"}
SELECTOR_LABEL = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\bby\s*\(([^)]*)\)")


def test_every_metric_in_the_rules_and_dashboard_is_one_relaygate_exports() -> None:
    series = exported()
    assert "relaygate_requests_total" in series  # the suffixes are prometheus-client's
    expressions = promql_expressions()
    assert len(expressions) > 10
    for where, expr in expressions:
        bare = re.sub(r'"[^"]*"', '""', expr.replace("$__rate_interval", "5m"))
        bare = re.sub(r"\{[^}]*\}", "{}", GROUPING.sub("", bare))  # labels are not metrics
        bare = re.sub(r"\[[^\]]*\]", "", bare)  # nor are durations
        used = set(IDENTIFIER.findall(bare)) - KEYWORDS
        metrics = {name for name in used if name.startswith("relaygate_")}
        assert metrics or used & PROMETHEUS_OWN, f"{where}: no metric in {expr}"
        for name in used - PROMETHEUS_OWN:
            assert name in series, f"{where}: {name} is not exported by relaygate"
        labels = set().union(*(series[name] for name in metrics)) | ALWAYS_LABELS
        for selector in re.findall(r"\{([^}]*)\}", expr):
            for label in SELECTOR_LABEL.findall(selector):
                assert label in labels, f"{where}: no label {label!r} on {metrics}"
        for grouping in GROUPING.findall(expr):
            for label in (g.strip() for g in grouping.split(",")):
                assert label in labels, f"{where}: grouped by {label!r}, not a label of {metrics}"


def test_a_misspelt_metric_is_caught() -> None:
    """The check above fails for a name relaygate does not export (it can fail)."""
    series = exported()
    assert "relaygate_request_total" not in series
    assert "relaygate_upstream_errors" not in series  # a counter is exposed with _total
    assert "relaygate_tokens" not in series and "relaygate_tokens_total" in series


def test_every_alert_is_complete_and_covers_the_issues_cases() -> None:
    rules = [
        r for g in load_yaml(DEPLOY / "prometheus" / "alerts.yml")["groups"] for r in g["rules"]
    ]
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
    exprs = " ".join(r["expr"] for r in rules)
    for metric in (
        'relaygate_requests_total{status=~"5.."}',  # error rate
        "relaygate_time_to_first_byte_seconds_bucket",  # latency
        "relaygate_upstream_errors_total",  # upstream errors
        'relaygate_requests_total{status="503"}',  # upstreams down
        "relaygate_usage_outbox_backlog",  # outbox backlog
        "relaygate_ratelimit_degraded",  # limits degraded
        "relaygate_usage_outbox_oldest_age_seconds",  # outbox age
        "relaygate_usage_write_duration_seconds_bucket",  # database latency
        "relaygate_redis_command_duration_seconds_bucket",  # Redis latency
    ):
        assert metric in exprs, metric


def test_the_dashboard_charts_the_issues_figures() -> None:
    """Issue 18's list: requests, latency, time to first token, tokens, cost, cache, limits,
    upstream errors, outbox depth and age, Redis and database latency."""
    charted = " ".join(expr for where, expr in promql_expressions() if where.startswith("panel"))
    for metric in (
        "relaygate_requests_total",
        "relaygate_request_duration_seconds_bucket",
        "relaygate_time_to_first_token_seconds_bucket",
        "relaygate_tokens_total",
        "relaygate_cost_usd_total",
        "relaygate_cache_requests_total",
        "relaygate_ratelimited_total",
        "relaygate_upstream_errors_total",
        "relaygate_usage_outbox_backlog",
        "relaygate_usage_outbox_oldest_age_seconds",
        "relaygate_usage_write_duration_seconds_bucket",
        "relaygate_redis_command_duration_seconds_bucket",
    ):
        assert metric in charted, metric


def test_prometheus_scrapes_the_replicas_and_loads_the_mounted_rules() -> None:
    prometheus = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    service = compose()["services"]["prometheus"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    for rule_file in prometheus["rule_files"]:
        assert mounted[rule_file] == "./prometheus/alerts.yml"
    (job,) = prometheus["scrape_configs"]
    assert job["job_name"] == "relaygate"  # the alerts' up{job="relaygate"}
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["relaygate"] and sd["port"] == ops_port(config())
    assert job["metrics_path"] == "/metrics" and "/metrics" in OPS_PATHS
    assert_served("/metrics")


def test_grafana_provisions_the_dashboard_from_where_it_is_mounted() -> None:
    service = compose()["services"]["grafana"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    provisioning = DEPLOY / mounted["/etc/grafana/provisioning"]
    (provider,) = load_yaml(provisioning / "dashboards" / "relaygate.yaml")["providers"]
    folder = provider["options"]["path"]
    dashboards = [target for target in mounted if target.startswith(folder + "/")]
    assert [mounted[d] for d in dashboards] == ["./grafana/relaygate-dashboard.json"]
    (source,) = load_yaml(provisioning / "datasources" / "prometheus.yaml")["datasources"]
    assert source["url"] == "http://prometheus:9090"
    dashboard = json.loads((DEPLOY / "grafana" / "relaygate-dashboard.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "relaygate"


# --- the deploy guide -----------------------------------------------------------------


def test_the_deploy_guide_names_files_that_exist() -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    paths = set(re.findall(r"\b((?:deploy|examples)/[\w./-]+\w)", guide))
    assert "deploy/compose.yaml" in paths and "deploy/k8s" in {p.rstrip("/") for p in paths}
    for path in paths:
        if path.startswith("deploy/nginx/tls/") or path == "deploy/.env":
            continue  # what the user creates
        assert (ROOT / path).exists(), path
    for example in (ROOT / "examples").glob("*.yaml"):
        assert f"examples/{example.name}" in guide, example.name
    assert "docs/deploy.md" in (ROOT / "README.md").read_text(encoding="utf-8")
