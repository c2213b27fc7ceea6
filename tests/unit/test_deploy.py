"""Deployment files stay consistent with the code (issue 5): Dockerfile, docker-compose.yml,
Kubernetes manifests, Prometheus rules and the Grafana dashboard.

No Docker engine or cluster runs here, so these are static checks: every environment variable
given to the worker is a :class:`~worker.config.Settings` field (and the set validates), ports
match ``WORKER_WEB_PORT``, referenced files exist, and every metric an alert or a dashboard
panel queries is one :class:`~worker.metrics.Metrics` exports.  When ``promtool`` is installed
(Debian package ``prometheus``) the rules and their unit tests are also run through it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from worker.config import Settings, load_settings
from worker.metrics import CollectorMetrics, Metrics

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the deployment files")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "feedback-worker.json"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
K8S = DEPLOY / "k8s"

DEFAULTS = Settings()
FIELDS = {name.upper() for name in Settings.model_fields}
WORKER_TOPICS = [
    DEFAULTS.topic_ui_events,
    DEFAULTS.topic_invalid,
    DEFAULTS.topic_late,
    DEFAULTS.topic_outbox,
    DEFAULTS.topic_dlq,
]

# Consumer-lag gauges are being added to worker/metrics.py in a parallel change (issue 5);
# alerts and the dashboard already use them.  Only names the worker does NOT export yet are
# tolerated, so this list empties itself once they land (and can then be deleted).
PENDING_METRICS = frozenset({"feedback_consumer_lag_records", "feedback_consumer_lag_seconds"})
# Series Prometheus itself produces for every target.
PROMETHEUS_SERIES = frozenset({"up"})

_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count", ""),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}


def exported_metric_names() -> set[str]:
    """Every series name the worker's or the collector's ``/metrics`` can show, whether or
    not a child exists yet."""
    names: set[str] = set()
    families = [*Metrics().registry.collect(), *CollectorMetrics().registry.collect()]
    for family in families:
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


EXPORTED = exported_metric_names()
ALLOWED = EXPORTED | (PENDING_METRICS - EXPORTED) | PROMETHEUS_SERIES


# --------------------------------------------------------------------------- PromQL names

_PROMQL_WORDS_TEXT = """
    sum min max avg group stddev stdvar count count_values bottomk topk quantile
    by without on ignoring group_left group_right and or unless bool offset atan2
    abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month day_of_week
    day_of_year days_in_month delta deriv exp floor histogram_quantile histogram_count
    histogram_sum histogram_fraction histogram_avg histogram_stddev histogram_stdvar holt_winters
    hour idelta increase irate label_join label_replace ln log2 log10 minute month
    predict_linear rate resets round scalar sgn sort sort_desc sqrt time timestamp vector year
    avg_over_time min_over_time max_over_time sum_over_time count_over_time quantile_over_time
    stddev_over_time stdvar_over_time last_over_time present_over_time mad_over_time
    acos acosh asin asinh atan atanh cos cosh sin sinh tan tanh deg rad pi inf nan
"""
_PROMQL_WORDS = frozenset(_PROMQL_WORDS_TEXT.split())


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a small lexer, good enough for our rules)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges, subqueries, $__rate_interval
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", text)
    text = re.sub(r"\b\d+(\.\d+)?(e-?\d+)?\b", " ", text)  # numbers, 1e-9
    tokens = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return {t for t in tokens if t.lower() not in _PROMQL_WORDS}


def test_metric_name_lexer() -> None:
    expr = (
        'sum by (rule) (increase(feedback_decisions_total{rating="false"}[1h] offset 1d)) '
        "/ clamp_min(sum(rate(feedback_events_total[$__rate_interval])), 1e-9) > 0.5 "
        'and on() count(up{job="x"} == 1) > 0 '
        "and histogram_quantile(0.95, sum by (le) "
        "(rate(feedback_delivery_delay_seconds_bucket[5m])))"
    )
    assert metric_names(expr) == {
        "feedback_decisions_total",
        "feedback_events_total",
        "up",
        "feedback_delivery_delay_seconds_bucket",
    }


def test_exported_names_include_the_suffixed_series() -> None:
    assert {
        "feedback_events_total",
        "feedback_decisions_total",
        "feedback_windows_open",
        "feedback_decision_delay_seconds_bucket",
        "feedback_decision_delay_seconds_count",
        "feedback_delivery_dlq_total",
        "feedback_delivery_breaker_state",
    } <= EXPORTED


# --------------------------------------------------------------------------- helpers


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def resolve_compose_value(value: Any) -> str:
    """``${NAME:-default}`` -> ``default`` (what compose uses when NAME is unset)."""
    text = str(value)
    text = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", text)
    return text.replace("$$", "$")


def compose() -> dict[str, Any]:
    document = load_yaml(COMPOSE)
    assert isinstance(document, dict)
    return document


def image_services() -> dict[str, dict[str, Any]]:
    """Services built from deploy/Dockerfile that run the ``feedback-worker`` entrypoint."""
    return {
        name: service
        for name, service in compose()["services"].items()
        if (service.get("build") or {}).get("dockerfile") == "deploy/Dockerfile"
        and "entrypoint" not in service
    }


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or ["run"]
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def worker_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in image_services().items() if _command(s)[0] == "run"}


def collector_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in image_services().items() if _command(s)[0] == "collect"}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): resolve_compose_value(v) for k, v in env.items()}


def k8s_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield path, document


def component(document: dict[str, Any]) -> str:
    """``worker`` or ``collector``; documents without the label belong to the worker."""
    labels = (document.get("metadata") or {}).get("labels") or {}
    return str(labels.get("app.kubernetes.io/component", "worker"))


def k8s(kind: str, of: str = "worker") -> list[dict[str, Any]]:
    return [
        doc for _, doc in k8s_documents() if doc.get("kind") == kind and component(doc) == of
    ]


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    rows = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            rows.append((keyword.upper(), rest.strip()))
    return rows


def test_dockerfile_is_multi_stage_slim_non_root() -> None:
    rows = dockerfile_instructions()
    args = dict(rest.split("=", 1) for kw, rest in rows if kw == "ARG" and "=" in rest)
    images = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
        for kw, rest in rows
        if kw == "FROM"
    ]
    assert len(images) >= 2, "expected a build stage and a runtime stage"
    assert all(image == "python:3.11-slim" for image in images), images
    assert any("COPY --from=" in f"{kw} {rest}" for kw, rest in rows)
    users = [rest for kw, rest in rows if kw == "USER"]
    assert users, "the image must switch to a non-root user"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_dockerfile_entrypoint_healthcheck_volume_port() -> None:
    rows = dockerfile_instructions()
    entrypoint = json.loads(next(rest for kw, rest in rows if kw == "ENTRYPOINT"))
    cmd = json.loads(next((rest for kw, rest in rows if kw == "CMD"), "[]"))
    assert [*entrypoint, *cmd][:2] == ["feedback-worker", "run"]

    healthcheck = next(rest for kw, rest in rows if kw == "HEALTHCHECK")
    assert "/healthz" in healthcheck and "urllib" in healthcheck and "python" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck

    env: dict[str, str] = {}
    for kw, rest in rows:
        if kw == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", rest))
    runtime_env = {k for k in env if k != "PATH" and not k.startswith(("PIP_", "PYTHON"))}
    assert runtime_env <= FIELDS, sorted(runtime_env - FIELDS)
    volumes = [v for kw, rest in rows if kw == "VOLUME" for v in json.loads(rest)]
    assert env["STATE_DIR"] in volumes
    exposed = [int(p.split("/")[0]) for kw, rest in rows if kw == "EXPOSE" for p in rest.split()]
    port = int(env.get("WORKER_WEB_PORT", DEFAULTS.worker_web_port))
    assert port in exposed and port == DEFAULTS.worker_web_port
    collector_port = int(env.get("COLLECTOR_PORT", DEFAULTS.collector_port))
    assert collector_port in exposed and collector_port == DEFAULTS.collector_port


# --------------------------------------------------------------------------- docker-compose.yml


def test_compose_kafka_runs_in_kraft_mode() -> None:
    kafka = compose()["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka")
    env = environment(kafka)
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "broker" in env["KAFKA_PROCESS_ROLES"]
    assert "zookeeper" not in COMPOSE.read_text().lower()


def test_compose_creates_every_topic_with_the_workers_partition_count() -> None:
    services = compose()["services"]
    topics = services["topics"]
    assert topics["image"].startswith("apache/kafka")
    assert topics.get("restart") == "no"
    command = topics["command"]
    script = " ".join(command) if isinstance(command, list) else command
    for topic in WORKER_TOPICS:
        assert re.search(rf"\b{re.escape(topic)}\b", script), topic
    partitions = {int(p) for p in re.findall(r"--partitions\s+(\d+)", script)}
    assert partitions == {8}
    for name, service in worker_services().items():
        assert int(environment(service)["TOPIC_PARTITIONS"]) in partitions, name
        assert service["depends_on"]["topics"]["condition"] == "service_completed_successfully"


def test_compose_workers_share_a_group_and_use_only_settings() -> None:
    workers = worker_services()
    assert len(workers) >= 2, "expected two worker replicas"
    groups = set()
    for name, service in workers.items():
        assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        env = environment(service)
        unknown = set(env) - FIELDS
        assert not unknown, f"{name}: not Settings fields: {sorted(unknown)}"
        load_settings({k.lower(): v for k, v in env.items()})  # the values validate too
        groups.add(env["WORKER_GROUP_ID"])
    assert len(groups) == 1


def test_compose_worker_ports_match_the_web_port() -> None:
    for name, service in worker_services().items():
        port = int(environment(service).get("WORKER_WEB_PORT", DEFAULTS.worker_web_port))
        container_ports = {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in service["ports"]}
        assert container_ports == {port}, name


def test_compose_receiver_is_the_default_helicone_in_profile_local(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.devtools import receiver as receiver_module

    services = compose()["services"]
    receiver = services["receiver"]
    assert receiver["profiles"] == ["local"]
    assert receiver["entrypoint"][-2:] == ["-m", "worker.devtools.receiver"]

    seen: dict[str, Any] = {}

    async def fake_serve(**kwargs: Any) -> None:
        seen.update(kwargs)

    monkeypatch.setattr(receiver_module, "serve", fake_serve)
    receiver_module.main([str(arg) for arg in receiver["command"]])  # its real CLI parser
    assert seen["host"] == "0.0.0.0"

    for name, service in worker_services().items():
        raw = service["environment"]
        # Overridable from the environment for the real API, the receiver otherwise.
        assert raw["HELICONE_BASE_URL"].startswith("${HELICONE_BASE_URL:-"), name
        assert raw["HELICONE_API_KEY"].startswith("${HELICONE_API_KEY:-"), name
        settings = load_settings({"helicone_base_url": environment(service)["HELICONE_BASE_URL"]})
        assert settings.helicone_base_url.host == "receiver"
        assert settings.helicone_base_url.port == seen["port"]
        assert service["depends_on"]["receiver"]["required"] is False


def test_compose_prometheus_and_grafana_mount_existing_files() -> None:
    services = compose()["services"]
    mounts: dict[str, str] = {}
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source, target = str(volume).split(":")[:2]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
                mounts[target] = source
    assert mounts["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    assert mounts["/etc/prometheus/alerts.yml"] == "./deploy/prometheus/alerts.yml"
    provisioning = next(t for t, s in mounts.items() if s == "./deploy/grafana/provisioning")
    dashboards = next(t for t, s in mounts.items() if s == "./deploy/grafana/dashboards")
    assert provisioning == "/etc/grafana/provisioning"
    provider = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "feedback-worker.yml")
    assert provider["providers"][0]["options"]["path"] == dashboards
    datasource = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")
    assert datasource["datasources"][0]["url"].endswith(":9090")


def test_prometheus_scrapes_every_worker_and_loads_the_alerts() -> None:
    config = load_yaml(PROMETHEUS)
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS.parent / rule_file).is_file() or Path(rule_file).name == ALERTS.name
    assert any(Path(f).name == ALERTS.name for f in config["rule_files"])
    targets = {
        job["job_name"]: {
            target for static in job.get("static_configs", []) for target in static["targets"]
        }
        for job in config["scrape_configs"]
    }
    expected = {
        f"{service.get('hostname', name)}:"
        f"{environment(service).get('WORKER_WEB_PORT', DEFAULTS.worker_web_port)}"
        for name, service in worker_services().items()
    }
    assert targets["feedback-worker"] == expected
    collectors = {
        f"{service.get('hostname', name)}:"
        f"{environment(service).get('COLLECTOR_PORT', DEFAULTS.collector_port)}"
        for name, service in collector_services().items()
    }
    assert targets["feedback-collector"] == collectors
    assert set(targets) == {"feedback-worker", "feedback-collector"}


# --------------------------------------------------------------------------- alert rules


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(ALERTS)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_every_alert_is_complete() -> None:
    rules = alert_rules()
    assert rules
    for rule in rules:
        name = rule["alert"]
        assert rule.get("expr"), name
        assert re.fullmatch(r"\d+[smhd]", str(rule.get("for", ""))), name
        assert rule.get("labels", {}).get("severity") in {"warning", "critical"}, name
        assert rule.get("annotations", {}).get("summary"), name
    assert len({rule["alert"] for rule in rules}) == len(rules), "duplicate alert names"


def test_the_issue_alerts_exist() -> None:
    by_expr = {rule["alert"]: " ".join(str(rule["expr"]).split()) for rule in alert_rules()}

    def uses(metric: str) -> list[str]:
        return [name for name, expr in by_expr.items() if metric in metric_names(expr)]

    assert uses("feedback_consumer_lag_seconds")
    assert uses("feedback_delivery_dlq_total")
    assert uses("feedback_delivery_attempts_total")
    assert uses("feedback_delivery_breaker_state")
    assert uses("feedback_delivery_auth_paused")
    assert uses("feedback_events_total")
    assert uses("feedback_collector_refused_total")
    regression = [
        name
        for name in uses("feedback_decisions_total")
        if "offset 1d" in by_expr[name] and 'rating="false"' in by_expr[name]
    ]
    assert regression, "expected a negative-share regression alert using offset 1d"
    assert "by (rule)" in by_expr[regression[0]]


def test_alerts_only_query_exported_metrics() -> None:
    for rule in alert_rules():
        unknown = metric_names(str(rule["expr"])) - ALLOWED
        assert not unknown, f"{rule['alert']}: unknown metrics {sorted(unknown)}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_checks_config_rules_and_rule_unit_tests() -> None:
    for args in (
        ["check", "config", str(PROMETHEUS)],
        ["check", "rules", str(ALERTS)],
        ["test", "rules", str(ALERTS_TEST)],
    ):
        result = subprocess.run(
            ["promtool", *args], capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- Grafana


def dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = list(dashboard["panels"])
    for panel in dashboard["panels"]:
        panels.extend(panel.get("panels", []))
    return [
        (panel["title"], target["expr"])
        for panel in panels
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def test_dashboard_only_queries_exported_metrics() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    used: set[str] = set()
    for title, expr in exprs:
        names = metric_names(expr)
        assert names, f"{title}: {expr!r} selects no metric"
        unknown = names - ALLOWED
        assert not unknown, f"panel {title!r}: unknown metrics {sorted(unknown)}"
        used |= names
    # The families of DESIGN 9 all have a panel.
    for family in (
        "feedback_events_total",
        "feedback_events_invalid_total",
        "feedback_events_late_total",
        "feedback_windows_open",
        "feedback_decisions_total",
        "feedback_decision_delay_seconds_bucket",
        "feedback_delivery_attempts_total",
        "feedback_delivery_duration_seconds_bucket",
        "feedback_delivery_retry_queue",
        "feedback_delivery_dlq_total",
        "feedback_delivery_breaker_state",
        "feedback_last_event_timestamp_seconds",
    ):
        assert family in used, family


def test_dashboard_shows_calibration_against_thumbs() -> None:
    """Issue 16: agreement and the precision of true and false ratings, per rule."""
    calibration = [
        (title, expr)
        for title, expr in dashboard_exprs()
        if "feedback_rule_agreement_total" in metric_names(expr)
    ]
    titles = {title for title, _ in calibration}
    assert {"Agreement with thumbs by rule (time range)", "Precision of true ratings by rule",
            "Precision of false ratings by rule"} <= titles
    assert all("by (rule)" in expr for _, expr in calibration)


def test_dashboard_ids_and_layout() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "feedback-worker"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


# --------------------------------------------------------------------------- Kubernetes


def test_k8s_manifests_parse_and_kustomization_lists_them() -> None:
    kinds = {doc["kind"] for _, doc in k8s_documents()}
    assert {"Deployment", "ConfigMap", "Secret", "ScaledObject", "PodMonitor"} <= kinds
    kustomization = load_yaml(K8S / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource


def test_k8s_settings_are_settings_fields_and_validate() -> None:
    (configmap,) = k8s("ConfigMap")
    (secret,) = k8s("Secret")
    assert set(configmap["data"]) <= FIELDS, sorted(set(configmap["data"]) - FIELDS)
    assert set(secret["stringData"]) == {"HELICONE_API_KEY"}
    assert "HELICONE_API_KEY" not in configmap["data"]
    values = {**configmap["data"], **secret["stringData"]}
    settings = load_settings({k.lower(): v for k, v in values.items()})
    settings.require_api_key()


def test_k8s_deployment_probes_resources_and_ports() -> None:
    (deployment,) = k8s("Deployment")
    (configmap,) = k8s("ConfigMap")
    (secret,) = k8s("Secret")
    port = int(configmap["data"].get("WORKER_WEB_PORT", DEFAULTS.worker_web_port))
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    named_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port in named_ports.values()

    def probe_port(probe: dict[str, Any]) -> int:
        value = probe["httpGet"]["port"]
        return int(named_ports[value] if isinstance(value, str) else value)

    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probe_port(container["livenessProbe"]) == port
    assert probe_port(container["readinessProbe"]) == port
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    assert container.get("args", ["run"])[0] == "run"

    env_from = {
        (ref_kind, item[ref_kind]["name"])
        for item in container["envFrom"]
        for ref_kind in ("configMapRef", "secretRef")
        if ref_kind in item
    }
    assert env_from == {
        ("configMapRef", configmap["metadata"]["name"]),
        ("secretRef", secret["metadata"]["name"]),
    }
    state_dir = configmap["data"]["STATE_DIR"]
    assert state_dir in {m["mountPath"] for m in container["volumeMounts"]}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True

    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    (monitor,) = k8s("PodMonitor")
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= set(named_ports)
    labels = pod["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_k8s_keda_scales_on_the_workers_consumer_lag() -> None:
    (deployment,) = k8s("Deployment")
    (configmap,) = k8s("ConfigMap")
    (scaled,) = k8s("ScaledObject")
    data = configmap["data"]
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (trigger,) = [t for t in spec["triggers"] if t["type"] == "kafka"]
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == data.get("WORKER_GROUP_ID", DEFAULTS.worker_group_id)
    assert meta["topic"] == data.get("TOPIC_UI_EVENTS", DEFAULTS.topic_ui_events)
    assert meta["bootstrapServers"] == data["KAFKA_BOOTSTRAP_SERVERS"]
    assert int(meta["lagThreshold"]) > 0
    # Replicas beyond the partition count would sit idle.
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= int(data["TOPIC_PARTITIONS"])


# --------------------------------------------------------------------------- the collector


def _healthcheck_url(service: dict[str, Any]) -> str:
    test = " ".join(str(part) for part in service["healthcheck"]["test"])
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", test)
    assert match, test
    return f"{match.group(1)}{match.group(2)}"


def test_compose_collector_runs_collect_with_valid_settings_and_no_helicone_key() -> None:
    (collector,) = collector_services().values()
    assert _command(collector) == ["collect"]
    assert collector["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    env = environment(collector)
    assert set(env) <= FIELDS, sorted(set(env) - FIELDS)
    assert "HELICONE_API_KEY" not in env  # least privilege: it only writes ui-events
    raw = collector["environment"]
    assert str(raw["COLLECTOR_WRITE_KEYS"]).startswith("${COLLECTOR_WRITE_KEYS:-")
    settings = load_settings({k.lower(): v for k, v in env.items()})
    assert settings.require_write_keys()
    # It writes where the workers read.
    for worker in worker_services().values():
        worker_env = environment(worker)
        for name in ("KAFKA_BOOTSTRAP_SERVERS", "TOPIC_PARTITIONS"):
            assert env[name] == worker_env[name], name
    assert settings.topic_ui_events == DEFAULTS.topic_ui_events  # the topics service's name
    port = settings.collector_port
    container_ports = {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in collector["ports"]}
    assert container_ports == {port}
    # The image's HEALTHCHECK probes the worker port, so the collector must override it.
    assert _healthcheck_url(collector) == f"{port}/healthz"


def collector_manifests() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for _, doc in k8s_documents():
        if component(doc) == "collector":
            assert doc["kind"] not in found, f"two collector {doc['kind']}s"
            found[doc["kind"]] = doc
    return found


def test_k8s_collector_manifests_exist_and_kustomization_lists_all_but_the_example() -> None:
    manifests = collector_manifests()
    assert {
        "ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler", "Ingress"
    } <= set(manifests)
    listed = set(load_yaml(K8S / "kustomization.yaml")["resources"])
    files = {path.name for path in K8S.glob("collector-*.yaml")}
    assert files - listed == {"collector-ingress.yaml"}


def test_k8s_collector_deployment_settings_probes_and_ports() -> None:
    m = collector_manifests()
    (worker_config,) = k8s("ConfigMap")
    (helicone,) = k8s("Secret")
    pod = m["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["collect"]
    refs = [
        (kind, item[kind]["name"])
        for item in container["envFrom"]
        for kind in ("configMapRef", "secretRef")
        if kind in item
    ]
    assert refs == [
        ("configMapRef", worker_config["metadata"]["name"]),  # the same broker and topics
        ("configMapRef", m["ConfigMap"]["metadata"]["name"]),
        ("secretRef", m["Secret"]["metadata"]["name"]),
    ]
    assert ("secretRef", helicone["metadata"]["name"]) not in refs
    assert set(m["ConfigMap"]["data"]) <= FIELDS, sorted(set(m["ConfigMap"]["data"]) - FIELDS)
    assert set(m["Secret"]["stringData"]) == {"COLLECTOR_WRITE_KEYS"}
    assert "COLLECTOR_WRITE_KEYS" not in m["ConfigMap"]["data"]
    values = {**worker_config["data"], **m["ConfigMap"]["data"], **m["Secret"]["stringData"]}
    settings = load_settings({k.lower(): v for k, v in values.items()})
    assert settings.require_write_keys()
    assert settings.collector_trust_forwarded_for  # it sits behind the Ingress

    named_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named_ports == {"http": settings.collector_port}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}
    assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == settings.collector_port
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    labels = pod["metadata"]["labels"]
    assert m["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_k8s_collector_service_hpa_and_ingress_point_at_it() -> None:
    m = collector_manifests()
    deployment, service = m["Deployment"], m["Service"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    # The worker's Service must not select collector pods, nor the collector's worker pods.
    (worker_service,) = k8s("Service")
    assert not worker_service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in {p["name"] for p in container["ports"]}

    hpa = m["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]
    }
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert container["resources"]["requests"]["cpu"]  # utilisation is relative to it
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]

    backends = [
        path["backend"]["service"]
        for rule in m["Ingress"]["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]
    assert backends
    for backend in backends:
        assert backend["name"] == service["metadata"]["name"]
        assert backend["port"]["name"] == service_port["name"]
