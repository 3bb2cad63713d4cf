"""The cluster deployment files (issue 13, part 7): deploy/compose and deploy/kubernetes.

Checked offline, with no cluster and no network: the compose file against the Compose
Specification's JSON schema (check-jsonschema's vendored copy), the manifests against the
Kubernetes API's JSON schemas (kubernetes-validate's bundled copies, strict: an unknown field
fails), the Prometheus configurations by promtool; then what no schema knows: every setting
named is a real one and the whole loads as a node's settings, the stop grace outlasts the
drain, node ids are distinct, the probes hit /healthz and /readyz, the sentinel:// URL names
the Sentinels these files run.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from signaling.settings import ENV_PREFIX, Settings, load_settings, settings_fields
from signaling.state.sentinel import parse_sentinel_url
from tests.fixtures.certificates import self_signed_certificate

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
ENV_EXAMPLE = COMPOSE_DIR / "env.example"
KUBERNETES_DIR = REPO / "deploy" / "kubernetes"
SECRET_TEMPLATE = KUBERNETES_DIR / "secret.example.yaml"

KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
"""The oldest Kubernetes release the manifests are meant for, and the newest schema bundled."""
STOP_MARGIN_S = 10.0
"""What a node needs after the drain: recordings closed, WebSockets closed (aiohttp's own
shutdown allows 5 s), participants removed from Redis, a final audit checkpoint signed."""
CHECK_JSONSCHEMA = (sys.executable, "-m", "check_jsonschema")
"""check-jsonschema, with its vendored copy of the Compose Specification's schema (no download)."""
SETTING_ENV_NAMES = {ENV_PREFIX + f.name.upper() for f in settings_fields()}
NOT_A_SETTING = {"CONSILIUM_CONFIG"}
"""Read by `load_settings` itself: where the TOML file is."""


# -- reading the files -------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text("utf-8"))
    return data


def consilium_services() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose()["services"].items()
        if name.startswith("consilium-")
    }


def env_example() -> dict[str, str]:
    """The variables of env.example; empty ones (the secrets) get URL-safe stand-ins."""
    values = {}
    for line in ENV_EXAMPLE.read_text("utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value or f"0123456789abcdef{name.lower()}"
    return values


def interpolate(text: str) -> str:
    """Compose's `${NAME}`, `${NAME:?message}` and `${NAME:-default}` from env.example."""
    values = env_example()

    def value(match: re.Match[str]) -> str:
        assert match.group(1) in values, (
            f"compose.yaml uses ${{{match.group(1)}}}: not in env.example"
        )
        return values[match.group(1)]

    return re.sub(r"\$\{(\w+)(?::?[?-][^}]*)?\}", value, text).replace("$$", "$")


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    return {name: interpolate(str(value)) for name, value in service["environment"].items()}


def manifests() -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object of deploy/kubernetes, the Secret template included."""
    for path in sorted(KUBERNETES_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text("utf-8")):
            if document:
                yield path, document


def manifest(kind: str, name: str) -> dict[str, Any]:
    found = [m for _, m in manifests() if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"deploy/kubernetes has {len(found)} {kind} named {name}"
    return found[0]


def consilium_container() -> dict[str, Any]:
    pod = manifest("StatefulSet", "consilium")["spec"]["template"]["spec"]
    container: dict[str, Any] = pod["containers"][0]
    return container


def pod_environment(container: dict[str, Any], pod_name: str) -> dict[str, str]:
    """A container's environment as the kubelet would give it, with the Secret template's
    values and `$(NAME)` expanded from the variables before it, as Kubernetes does."""
    secret = manifest("Secret", "consilium-secrets")["stringData"]
    fields = {"metadata.name": pod_name, "status.hostIP": "10.20.30.41"}
    env: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], item["value"])
        elif "fieldRef" in item["valueFrom"]:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "consilium-secrets", ref
            env[item["name"]] = secret[ref["key"]]
    return env


def compose_settings(name: str) -> Settings:
    """What `consilium serve` would run with in the compose service `name`."""
    service = consilium_services()[name]
    env = compose_environment(service)
    (toml,) = [c for c in service["configs"] if c["target"] == env["CONSILIUM_CONFIG"]]
    env["CONSILIUM_CONFIG"] = str(COMPOSE_DIR / compose()["configs"][toml["source"]]["file"])
    return load_settings(env=env)


def kubernetes_settings(pod_name: str, tmp_path: Path) -> Settings:
    """What `consilium serve` would run with in the pod `pod_name` of the StatefulSet."""
    container = consilium_container()
    env = pod_environment(container, pod_name)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == env["CONSILIUM_CONFIG"]]
    config = manifest("ConfigMap", "consilium-config")["data"][mount["subPath"]]
    env["CONSILIUM_CONFIG"] = str(tmp_path / "consilium.toml")
    Path(env["CONSILIUM_CONFIG"]).write_text(config, "utf-8")
    return load_settings(env=env)


def seconds(duration: str | int) -> float:
    """A compose duration (`60s`, `1m30s`) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(duration))
    assert parts, f"not a duration: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


# -- schemas -----------------------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification() -> None:
    result = subprocess.run(
        [*CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_manifests_follow_the_kubernetes_schemas(version: str) -> None:
    for path, document in manifests():
        where = f"{path.name}: {document['kind']} {document['metadata']['name']}"
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{where}: at {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            pytest.fail(f"{where}: no such kind in Kubernetes {version}: {e}")


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    kustomization = yaml.safe_load((KUBERNETES_DIR / "kustomization.yaml").read_text("utf-8"))
    files = {p.name for p in KUBERNETES_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files - {SECRET_TEMPLATE.name}
    assert kustomization["namespace"] == manifest("Namespace", "consilium")["metadata"]["name"]


def promtool_configs() -> dict[str, str]:
    return {
        "compose": (COMPOSE_DIR / "prometheus.yml").read_text("utf-8"),
        "kubernetes": manifest("ConfigMap", "prometheus-config")["data"]["prometheus.yml"],
    }


@pytest.mark.parametrize("where", ["compose", "kubernetes"])
def test_prometheus_configuration_passes_promtool(where: str, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    # promtool checks that the token file exists: point it at a stand-in.
    token = tmp_path / "metrics-token"
    token.write_text("token\n", "utf-8")
    config = yaml.safe_load(promtool_configs()[where])
    for job in config["scrape_configs"]:
        job["authorization"]["credentials_file"] = str(token)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), "utf-8")
    result = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_haproxy_configuration_is_valid(tmp_path: Path) -> None:
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if haproxy is None:
        pytest.skip("haproxy is not installed (Debian package haproxy)")
    # haproxy -c loads the certificate: a throwaway one stands in for secrets/tls.pem.
    cert, key = self_signed_certificate(tmp_path, common_name="mdt.hospital.example")
    pem = tmp_path / "tls.pem"
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    config = (COMPOSE_DIR / "haproxy.cfg").read_text("utf-8")
    (tls_pem,) = compose()["services"]["haproxy"]["secrets"]
    path = tmp_path / "haproxy.cfg"
    path.write_text(config.replace(f"/run/secrets/{tls_pem}", str(pem)), "utf-8")
    result = subprocess.run(
        [haproxy, "-c", "-f", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- settings ----------------------------------------------------------------------------------


def test_every_consilium_variable_is_a_setting() -> None:
    named = {
        f"compose {name}": set(compose_environment(service))
        for name, service in consilium_services().items()
    }
    named["kubernetes"] = {item["name"] for item in consilium_container()["env"]}
    named["Dockerfile"] = set(re.findall(r"\b(CONSILIUM_\w+)=", DOCKERFILE.read_text("utf-8")))
    for where, names in named.items():
        unknown = {n for n in names if n.startswith(ENV_PREFIX)} - SETTING_ENV_NAMES - NOT_A_SETTING
        assert not unknown, f"{where}: not settings: {sorted(unknown)}"


@pytest.mark.parametrize("node", ["consilium-a", "consilium-b", "consilium-c"])
def test_compose_node_settings_load(node: str) -> None:
    # An unknown key in the TOML file, or a value a setting refuses, raises ConfigError here.
    settings = compose_settings(node)
    assert not settings.dev_mode
    assert settings.redis is not None and settings.redis.startswith("sentinel://")


@pytest.mark.parametrize("pod", ["consilium-0", "consilium-1", "consilium-2"])
def test_kubernetes_node_settings_load(pod: str, tmp_path: Path) -> None:
    settings = kubernetes_settings(pod, tmp_path)
    assert not settings.dev_mode and settings.tls
    assert settings.node_id == pod
    assert settings.ice_host_addresses == ["10.20.30.41"]


def test_stop_grace_outlasts_the_drain(tmp_path: Path) -> None:
    for name, service in consilium_services().items():
        drain = compose_settings(name).drain_timeout_s
        assert service["stop_signal"] == "SIGTERM"
        assert seconds(service["stop_grace_period"]) >= drain + STOP_MARGIN_S, name
    pod = manifest("StatefulSet", "consilium")["spec"]["template"]["spec"]
    drain = kubernetes_settings("consilium-0", tmp_path).drain_timeout_s
    assert pod["terminationGracePeriodSeconds"] >= drain + STOP_MARGIN_S
    # SIGTERM reaches `consilium serve` (which drains on it) through tini, not a shell.
    dockerfile = DOCKERFILE.read_text("utf-8")
    assert "STOPSIGNAL SIGTERM\n" in dockerfile
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "consilium"]\n' in dockerfile


# -- nodes -------------------------------------------------------------------------------------


def test_compose_nodes_have_their_own_id_port_media_range_and_volumes() -> None:
    nodes = [compose_settings(name) for name in consilium_services()]
    assert len(nodes) == 3
    # One network (the host's) for all three: nothing may be shared.
    assert len({n.node_id for n in nodes}) == 3
    assert len({n.port for n in nodes}) == 3
    ranges = sorted((n.ice_port_min, n.ice_port_max) for n in nodes)
    assert all(low < high for low, high in ranges)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges)), ranges
    volumes = [v for s in consilium_services().values() for v in s["volumes"]]
    assert len(set(volumes)) == len(volumes) == 6
    for service in consilium_services().values():
        assert service["network_mode"] == "host"
        mounts = {v.split(":")[1] for v in service["volumes"]}
        assert mounts == {"/var/lib/consilium", "/var/lib/consilium-keys"}


def test_kubernetes_nodes_are_named_after_their_pods(tmp_path: Path) -> None:
    statefulset = manifest("StatefulSet", "consilium")
    assert statefulset["spec"]["replicas"] == 3
    ids = {kubernetes_settings(f"consilium-{i}", tmp_path).node_id for i in range(3)}
    assert len(ids) == 3
    assert "node_id" not in manifest("ConfigMap", "consilium-config")["data"]["consilium.toml"]
    claims = {c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]}
    assert claims == {"data", "keys"}


def test_kubernetes_probes_hit_healthz_and_readyz(tmp_path: Path) -> None:
    container = consilium_container()
    settings = kubernetes_settings("consilium-0", tmp_path)
    (port,) = [p for p in container["ports"] if p["name"] == "https"]
    assert port["containerPort"] == settings.port
    expected = {
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
        "startupProbe": "/healthz",
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"], get["scheme"]) == (path, "https", "HTTPS"), probe


def test_compose_checks_healthz_and_routes_by_readyz() -> None:
    ports = sorted(compose_settings(name).port for name in consilium_services())
    for service in consilium_services().values():
        assert "/healthz" in " ".join(service["healthcheck"]["test"])
    assert "/healthz" in DOCKERFILE.read_text("utf-8").split("HEALTHCHECK", 1)[1]
    haproxy = (COMPOSE_DIR / "haproxy.cfg").read_text("utf-8")
    assert "option httpchk GET /readyz\n" in haproxy
    servers = re.findall(r"^\s*server \S+ 127\.0\.0\.1:(\d+)", haproxy, re.MULTILINE)
    assert sorted(int(p) for p in servers) == ports


def test_prometheus_scrapes_every_node_with_the_metrics_token() -> None:
    compose_ports = sorted(compose_settings(name).port for name in consilium_services())
    prometheus = compose()["services"]["prometheus"]
    (config,) = yaml.safe_load(promtool_configs()["compose"])["scrape_configs"]
    assert config["authorization"]["credentials_file"] == "/run/secrets/metrics_token"
    assert "metrics_token" in prometheus["secrets"]
    assert compose()["secrets"]["metrics_token"] == {"environment": "METRICS_TOKEN"}
    for service in consilium_services().values():
        assert service["environment"]["CONSILIUM_METRICS_TOKEN"].startswith("${METRICS_TOKEN")
    targets = [t for group in config["static_configs"] for t in group["targets"]]
    assert sorted(int(t.rsplit(":", 1)[1]) for t in targets) == compose_ports

    (config,) = yaml.safe_load(promtool_configs()["kubernetes"])["scrape_configs"]
    deployment = manifest("Deployment", "prometheus")["spec"]["template"]["spec"]
    (mount,) = [
        m for m in deployment["containers"][0]["volumeMounts"] if m["name"] == "metrics-token"
    ]
    (volume,) = [v for v in deployment["volumes"] if v["name"] == "metrics-token"]
    (item,) = volume["secret"]["items"]
    assert config["authorization"]["credentials_file"] == f"{mount['mountPath']}/{item['path']}"
    assert item["key"] == "metrics-token"
    targets = [t for group in config["static_configs"] for t in group["targets"]]
    assert targets == [f"consilium-{i}.consilium-nodes:8443" for i in range(3)]
    assert manifest("Service", "consilium-nodes")["spec"]["publishNotReadyAddresses"] is True


# -- Redis Sentinel ----------------------------------------------------------------------------


def test_compose_sentinel_url_names_the_sentinels_of_the_compose_file() -> None:
    services = compose()["services"]
    sentinels = {
        int(s["environment"]["SENTINEL_PORT"]): name
        for name, s in services.items()
        if "redis-sentinel" in " ".join(s.get("command", []))
    }
    assert len(sentinels) == 3
    for node in consilium_services():
        url = parse_sentinel_url(compose_settings(node).redis or "")
        # Every service is on the host's network: each Sentinel is 127.0.0.1 and its own port.
        assert {host for host, _ in url.sentinels} == {"127.0.0.1"}
        assert sorted(port for _, port in url.sentinels) == sorted(sentinels)
        assert url.password == env_example()["REDIS_PASSWORD"]
        for name in sentinels.values():
            script = "\n".join(services[name]["command"])
            assert f"sentinel monitor {url.service} 127.0.0.1 6379 2" in script
    assert "--port 6379 " in "\n".join(services["redis-primary"]["command"])
    assert all(s["network_mode"] == "host" for s in services.values())


def test_kubernetes_sentinel_url_names_the_sentinel_pods(tmp_path: Path) -> None:
    url = parse_sentinel_url(kubernetes_settings("consilium-0", tmp_path).redis or "")
    assert url.password == manifest("Secret", "consilium-secrets")["stringData"]["redis-password"]
    assert len(url.sentinels) == 3
    for host, port in url.sentinels:
        # <statefulset>-<ordinal>.<headless service>: a pod the StatefulSet runs.
        pod, service_name = host.split(".")
        statefulset_name, _, ordinal = pod.rpartition("-")
        statefulset = manifest("StatefulSet", statefulset_name)
        assert statefulset["spec"]["serviceName"] == service_name
        assert int(ordinal) < statefulset["spec"]["replicas"]
        service = manifest("Service", service_name)
        assert service["spec"]["clusterIP"] == "None"
        assert port in [p["port"] for p in service["spec"]["ports"]]
    script = manifest("ConfigMap", "redis-scripts")["data"]["sentinel.sh"]
    assert f"sentinel monitor {url.service} $primary 6379 2" in script


def test_shell_scripts_parse() -> None:
    scripts = dict(manifest("ConfigMap", "redis-scripts")["data"])
    for name, service in compose()["services"].items():
        command = service.get("command", [])
        if command[:2] == ["sh", "-c"]:
            scripts[name] = command[2].replace("$$", "$")
    for name, script in scripts.items():
        result = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True)
        assert result.returncode == 0, f"{name}: {result.stderr}"


# -- disruptions and secrets -------------------------------------------------------------------


def test_one_node_at_a_time_may_be_taken_down() -> None:
    budget = manifest("PodDisruptionBudget", "consilium")["spec"]
    labels = manifest("StatefulSet", "consilium")["spec"]["template"]["metadata"]["labels"]
    assert budget["maxUnavailable"] == 1
    assert budget["selector"]["matchLabels"].items() <= labels.items()


def test_compose_files_referenced_exist() -> None:
    for name, config in compose()["configs"].items():
        assert (COMPOSE_DIR / config["file"]).is_file(), f"config {name}: {config['file']}"


def test_no_secret_is_committed() -> None:
    secret = manifest("Secret", "consilium-secrets")["stringData"]
    assert all(value.startswith("change-me") for value in secret.values()), secret
    for line in ENV_EXAMPLE.read_text("utf-8").splitlines():
        if re.match(r"\w*(PASSWORD|SECRET|TOKEN)=", line):
            assert line.endswith("="), f"env.example holds a secret: {line}"
    ignored = (COMPOSE_DIR / ".gitignore").read_text("utf-8").splitlines()
    assert ".env" in ignored and "secrets/" in ignored
    for name, service in compose()["services"].items():
        for variable, value in service.get("environment", {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|REDIS", variable) and "__FILE" not in variable:
                assert "${" in str(value), f"{name}: {variable} is written in compose.yaml"
