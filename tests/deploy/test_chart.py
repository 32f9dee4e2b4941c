"""The Helm chart: lint, render, validate every object against the Kubernetes schemas, and check
what an operator relies on (one Deployment per process, migrations first, probes, graceful
shutdown, restricted pods, network policies that admit only callers, secrets wiring)."""

from __future__ import annotations

import importlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from parley_deploy import chart, dockerfiles, helm
from parley_kit.grpc_server import LIVENESS
from parley_kit.settings import AssigneeSettings

ROOT = chart.ROOT
CRD_KINDS = {"PodMonitor", "PrometheusRule", "ServiceMonitor"}


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def config_env(objects: list[dict[str, Any]], deployment: dict[str, Any]) -> dict[str, str]:
    """The plain environment of a Deployment's main container (its ConfigMap plus literal env)."""
    configmaps = chart.by_kind(objects, "ConfigMap")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


# ---- lint and schema validation -----------------------------------------------------------------


def test_chart_lints_strict_with_default_values() -> None:
    out = chart.lint()
    assert "0 chart(s) failed" in out


def test_chart_lints_strict_with_production_values() -> None:
    out = chart.lint(values=[chart.PRODUCTION_VALUES])
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("kube_version", chart.KUBE_VERSIONS)
@pytest.mark.parametrize(
    "scenario", ["default_objects", "production_objects", "operator_objects", "production_operator_objects"]
)
def test_every_rendered_object_validates_against_the_kubernetes_schemas(
    scenario: str, kube_version: str, request: pytest.FixtureRequest
) -> None:
    objects = request.getfixturevalue(scenario)
    errors = []
    checked = 0
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue  # custom resources: kubernetes-validate knows only built-in kinds
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
            checked += 1
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
    assert not errors, "\n".join(errors)
    assert checked >= 30


def test_values_schema_rejects_unknown_keys_and_bad_values() -> None:
    for bad in (
        "components.contacts.replica=3",  # typo of replicas
        "messaging.streamReplicas=7",
        "logLevel=TRACE",
        "defaults.probes.type=tcp",
        "components.contacts.database.url=mysql://x/y",
    ):
        with pytest.raises(helm.HelmError, match="schema"):
            chart.render(set_values=[bad])


def test_a_database_without_url_or_secret_fails_with_a_clear_message() -> None:
    with pytest.raises(helm.HelmError, match=r"components\.contacts\.database: set url"):
        chart.render(set_values=["components.contacts.database.url="])


# ---- components and processes ------------------------------------------------------------------


def test_every_service_directory_has_a_chart_component_and_every_component_a_service() -> None:
    services = {p.name for p in (ROOT / "services").iterdir() if p.is_dir()}
    components = chart.components()
    assert services - components == set(), f"services without a chart component: {sorted(services - components)}"
    assert components - services == set(), f"chart components without services/<name>: {components - services}"


def test_one_deployment_per_process_running_its_service_module(default_objects: list[dict[str, Any]]) -> None:
    deployments = chart.by_kind(default_objects, "Deployment")
    expected = {
        "parley-workspace": ("workspace", "serve"),
        "parley-contacts": ("contacts", "serve"),
        "parley-conversations": ("conversations", "serve"),
        "parley-channel-gateway": ("channel-gateway", "serve"),
        "parley-channel-gateway-web": ("channel-gateway", "web"),
        "parley-channel-gateway-worker": ("channel-gateway", "worker"),
    }
    assert set(deployments) == set(expected)
    for name, (component, command) in expected.items():
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == f"registry.example.com/parley/{component}:0.1.0"
        assert container["args"] == [command]
        assert pod_labels(deployments[name])["app.kubernetes.io/component"] == component
        module = "parley_" + component.replace("-", "_")
        main = ROOT / "services" / component / "src" / module / "__main__.py"
        if dockerfiles.runnable(component):
            assert main.exists(), f"{name} runs python -m {module}, which has no __main__.py"


def test_gateway_web_and_worker_share_one_image(default_objects: list[dict[str, Any]]) -> None:
    specs = chart.pod_specs(default_objects)
    images = {
        specs[n]["containers"][0]["image"] for n in ("parley-channel-gateway-web", "parley-channel-gateway-worker")
    }
    assert len(images) == 1


def test_each_grpc_service_selects_only_pods_that_serve_grpc(default_objects: list[dict[str, Any]]) -> None:
    services = chart.by_kind(default_objects, "Service")
    deployments = chart.by_kind(default_objects, "Deployment")
    for component in ("workspace", "contacts", "conversations", "channel-gateway"):
        svc = services[f"parley-{component}"]
        assert svc["spec"]["ports"] == [
            {"name": "grpc", "port": 50051, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"}
        ]
        selected = {n for n, d in deployments.items() if selector_matches(svc["spec"]["selector"], pod_labels(d))}
        assert selected == {f"parley-{component}"}, f"{component}'s Service selects {selected}"
    http = services["parley-channel-gateway-http"]
    selected = {n for n, d in deployments.items() if selector_matches(http["spec"]["selector"], pod_labels(d))}
    assert selected == {"parley-channel-gateway-web"}


def test_the_grpc_channel_service_can_move_into_the_web_deployment() -> None:
    objects = chart.render(
        set_values=[
            "components.channel-gateway.processes.serve.enabled=false",
            "components.channel-gateway.processes.web.grpcService=true",
            "components.channel-gateway.processes.web.ports.grpc=50051",
        ]
    )
    deployments = chart.by_kind(objects, "Deployment")
    assert "parley-channel-gateway" not in deployments
    svc = chart.by_kind(objects, "Service")["parley-channel-gateway"]
    selected = {n for n, d in deployments.items() if selector_matches(svc["spec"]["selector"], pod_labels(d))}
    assert selected == {"parley-channel-gateway-web"}


def test_callers_reach_each_service_through_its_grpc_service(default_objects: list[dict[str, Any]]) -> None:
    services = chart.by_kind(default_objects, "Service")
    deployments = chart.by_kind(default_objects, "Deployment")
    conversations = config_env(default_objects, deployments["parley-conversations"])
    assert conversations["PARLEY_CONTACTS_ADDR"] == "parley-contacts:50051"
    assert conversations["PARLEY_WORKSPACE_ADDR"] == "parley-workspace:50051"
    for name, deployment in deployments.items():
        env = config_env(default_objects, deployment)
        for key, value in env.items():
            if key.endswith("_ADDR"):
                host, port = value.rsplit(":", 1)
                assert host in services, f"{name}: {key}={value} names no Service"
                assert int(port) in [p["port"] for p in services[host]["spec"]["ports"]]


def test_a_false_override_beats_a_true_default() -> None:
    objects = chart.render(
        set_values=["components.contacts.autoscaling.enabled=false", "components.contacts.replicas=4"]
    )
    assert "parley-contacts" not in chart.by_kind(objects, "HorizontalPodAutoscaler")
    assert chart.by_kind(objects, "Deployment")["parley-contacts"]["spec"]["replicas"] == 4
    assert "parley-workspace" in chart.by_kind(objects, "HorizontalPodAutoscaler")


# ---- start, probes, stop -------------------------------------------------------------------------


def test_migrations_run_in_an_init_container_before_each_process_serves(
    default_objects: list[dict[str, Any]],
) -> None:
    for name, spec in chart.pod_specs(default_objects).items():
        init = {c["name"]: c for c in spec.get("initContainers", [])}
        assert "migrate" in init, f"{name} has no migrate init container"
        main = spec["containers"][0]
        assert init["migrate"]["args"] == ["migrate"]
        assert init["migrate"]["image"] == main["image"]
        assert init["migrate"]["env"] == main["env"] and init["migrate"]["envFrom"] == main["envFrom"]
        assert "PARLEY_DATABASE_URL" in chart.env_of(main)


def test_grpc_processes_have_native_grpc_probes_and_the_web_http_probes(
    default_objects: list[dict[str, Any]],
) -> None:
    for name, spec in chart.pod_specs(default_objects).items():
        container = spec["containers"][0]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe in container, f"{name} has no {probe}"
        if name.endswith("-web"):
            assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
            assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
            assert container["ports"][0] == {"name": "http", "containerPort": 8080, "protocol": "TCP"}
        else:
            # Readiness is the whole server (NATS connected); liveness and startup ask the "liveness" health
            # name, SERVING while the event loop runs, so a NATS outage never restarts pods.
            assert container["readinessProbe"]["grpc"] == {"port": 50051}
            assert container["livenessProbe"]["grpc"] == {"port": 50051, "service": LIVENESS}
            assert container["startupProbe"]["grpc"] == {"port": 50051, "service": LIVENESS}


@pytest.mark.parametrize("scenario", ["default_objects", "production_objects"])
def test_termination_grace_outlasts_the_prestop_delay_and_the_shutdown_grace(
    scenario: str, request: pytest.FixtureRequest
) -> None:
    objects = request.getfixturevalue(scenario)
    for name, deployment in chart.by_kind(objects, "Deployment").items():
        spec = deployment["spec"]["template"]["spec"]
        container = spec["containers"][0]
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        pre_stop = float(command[1])
        grace = float(config_env(objects, deployment)["PARLEY_SHUTDOWN_GRACE_SECONDS"])
        assert pre_stop > 0
        assert spec["terminationGracePeriodSeconds"] > pre_stop + grace, name


def test_rolling_updates_keep_every_ready_pod_until_its_replacement_is_ready(
    default_objects: list[dict[str, Any]],
) -> None:
    for deployment in chart.by_kind(default_objects, "Deployment").values():
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


# ---- security and resources --------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["default_objects", "production_objects"])
def test_pods_meet_the_restricted_pod_security_standard(scenario: str, request: pytest.FixtureRequest) -> None:
    for name, spec in chart.pod_specs(request.getfixturevalue(scenario)).items():
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts["/tmp"] == "tmp"
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes["tmp"]


def test_every_process_has_resources_an_autoscaler_and_a_disruption_budget(
    default_objects: list[dict[str, Any]],
) -> None:
    deployments = chart.by_kind(default_objects, "Deployment")
    hpas = chart.by_kind(default_objects, "HorizontalPodAutoscaler")
    pdbs = chart.by_kind(default_objects, "PodDisruptionBudget")
    for name, deployment in deployments.items():
        resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
        assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]
        assert hpas[name]["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
        assert selector_matches(pdbs[name]["spec"]["selector"]["matchLabels"], pod_labels(deployment))
    assert len(chart.by_kind(default_objects, "ServiceAccount")) == 1


# ---- network policies ------------------------------------------------------------------------------


def grpc_callers(policy: dict[str, Any]) -> set[str]:
    callers = set()
    for rule in policy["spec"].get("ingress") or []:
        if {"port": "grpc", "protocol": "TCP"} in rule.get("ports", []):
            for peer in rule["from"]:
                callers.add(peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"])
    return callers


def test_network_policies_admit_each_service_only_from_its_callers(default_objects: list[dict[str, Any]]) -> None:
    policies = chart.by_kind(default_objects, "NetworkPolicy")
    assert set(policies) == set(chart.by_kind(default_objects, "Deployment"))
    assert grpc_callers(policies["parley-contacts"]) == {"conversations"}
    assert grpc_callers(policies["parley-workspace"]) == {"contacts", "conversations", "channel-gateway"}
    assert grpc_callers(policies["parley-conversations"]) == set()
    assert grpc_callers(policies["parley-channel-gateway-web"]) == set()
    web_rules = policies["parley-channel-gateway-web"]["spec"]["ingress"]
    http_rule = next(r for r in web_rules if {"port": "http", "protocol": "TCP"} in r["ports"])
    assert http_rule["from"][0]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}
    }
    for name, policy in policies.items():
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        ports = [p for rule in policy["spec"]["ingress"] for p in rule["ports"]]
        assert {"port": "metrics", "protocol": "TCP"} in ports, f"{name}: Prometheus cannot scrape"
        if not name.endswith("-web"):
            assert {"port": "http", "protocol": "TCP"} not in ports


def test_egress_allows_dns_nats_the_database_and_the_callees_only(default_objects: list[dict[str, Any]]) -> None:
    policy = chart.by_kind(default_objects, "NetworkPolicy")["parley-conversations"]
    egress = policy["spec"]["egress"]
    ports = [p["port"] for rule in egress for p in rule["ports"]]
    assert ports == [53, 53, 4222, 5432, "grpc", "grpc"]
    callees = {
        rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for rule in egress
        if rule["ports"][0]["port"] == "grpc"
    }
    assert callees == {"contacts", "workspace"}
    gateway = chart.by_kind(default_objects, "NetworkPolicy")["parley-channel-gateway-worker"]
    assert {"ports": [{"port": 443, "protocol": "TCP"}]} in gateway["spec"]["egress"], "providers over HTTPS"


def grpc_callees(policy: dict[str, Any]) -> set[str]:
    return {
        rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for rule in policy["spec"]["egress"]
        if rule["ports"][0]["port"] == "grpc"
    }


@pytest.mark.parametrize("scenario", ["default_objects", "production_objects"])
def test_services_that_check_assignees_get_the_workspace_and_may_reach_it(
    scenario: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Contacts and conversations refuse to start without PARLEY_WORKSPACE_ADDR (their assignee check): each of
    their processes gets it, starts with the rendered environment, and its NetworkPolicies let it through."""
    objects = request.getfixturevalue(scenario)
    deployments = chart.by_kind(objects, "Deployment")
    policies = chart.by_kind(objects, "NetworkPolicy")
    checking = set()
    for name, deployment in deployments.items():
        component = pod_labels(deployment)["app.kubernetes.io/component"]
        settings = importlib.import_module(f"parley_{component.replace('-', '_')}.config").Settings
        if not issubclass(settings, AssigneeSettings):
            continue
        checking.add(component)
        env = config_env(objects, deployment)
        assert env["PARLEY_WORKSPACE_ADDR"] == "parley-workspace:50051", name
        for key in [k for k in os.environ if k.startswith("PARLEY_")]:
            monkeypatch.delenv(key)
        secrets = {"PARLEY_DATABASE_URL": "postgresql://x@db/x", "PARLEY_SERVICE_TOKEN": "token"}  # from Secrets
        for key, value in {**env, **secrets}.items():
            monkeypatch.setenv(key, value)
        assert settings().assignee_check, f"{name} starts without checking assignees"
        assert "workspace" in grpc_callees(policies[name]), f"{name} may not reach the workspace"
        assert component in grpc_callers(policies["parley-workspace"]), f"the workspace does not admit {name}"
    assert checking == {"contacts", "conversations"}


# ---- ingress, config and secrets ------------------------------------------------------------------------


def test_ingress_routes_only_webhooks_to_the_gateway_web(default_objects: list[dict[str, Any]]) -> None:
    ingress = chart.by_kind(default_objects, "Ingress")["parley-webhooks"]
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert [p["path"] for p in paths] == ["/webhooks"]
    assert paths[0]["backend"]["service"] == {"name": "parley-channel-gateway-http", "port": {"name": "http"}}


def references(spec: dict[str, Any]) -> tuple[set[tuple[str, str | None, bool]], set[str]]:
    """(secret name, key, optional) and configmap names a pod spec refers to."""
    secrets: set[tuple[str, str | None, bool]] = set()
    configmaps: set[str] = set()
    for container in spec["containers"] + spec.get("initContainers", []):
        for entry in container.get("env", []):
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                secrets.add((ref["name"], ref["key"], bool(ref.get("optional"))))
        for source in container.get("envFrom", []):
            configmaps.add(source["configMapRef"]["name"])
    for volume in spec["volumes"]:
        if "secret" in volume:
            for item in volume["secret"]["items"]:
                secrets.add((volume["secret"]["secretName"], item["key"], False))
        if "configMap" in volume:
            configmaps.add(volume["configMap"]["name"])
    return secrets, configmaps


def test_every_referenced_secret_key_and_configmap_exists(secrets_objects: list[dict[str, Any]]) -> None:
    rendered_secrets = chart.by_kind(secrets_objects, "Secret")
    rendered_configmaps = chart.by_kind(secrets_objects, "ConfigMap")
    for name, spec in chart.pod_specs(secrets_objects).items():
        secrets, configmaps = references(spec)
        for secret, key, _optional in secrets:
            assert secret in rendered_secrets, f"{name} refers to Secret {secret}, which is not rendered"
            assert key in rendered_secrets[secret]["stringData"], f"{name} needs {secret}/{key}"
        assert configmaps <= set(rendered_configmaps), f"{name}: {configmaps - set(rendered_configmaps)}"


def test_the_workspace_gets_its_signing_key_as_a_file_and_the_gateway_its_meta_secrets(
    secrets_objects: list[dict[str, Any]],
) -> None:
    specs = chart.pod_specs(secrets_objects)
    workspace = specs["parley-workspace"]["containers"][0]
    env = chart.env_of(workspace)
    assert env["PARLEY_SIGNING_KEY_FILE"]["value"] == "/etc/parley/secrets/signing-key.pem"
    assert {"name": "secret-files", "mountPath": "/etc/parley/secrets", "readOnly": True} in workspace["volumeMounts"]
    assert env["PARLEY_WORKSPACE_OPERATOR_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "operator-secret"
    web = chart.env_of(specs["parley-channel-gateway-web"]["containers"][0])
    for var in ("PARLEY_META_APP_SECRET", "PARLEY_META_VERIFY_TOKEN", "PARLEY_ENCRYPTION_KEY", "PARLEY_DATABASE_URL"):
        assert web[var]["valueFrom"]["secretKeyRef"]["name"] == "parley-channel-gateway"
    deployment = chart.by_kind(secrets_objects, "Deployment")["parley-workspace"]
    plain = config_env(secrets_objects, deployment)
    assert plain["PARLEY_SIGNING_KEY_ID"] == "test-kid"
    assert plain["PARLEY_AUTH_JWKS_FILE"] == "/etc/parley/auth/jwks.json"


def test_empty_secrets_are_left_out_so_pods_fail_with_a_missing_key(default_objects: list[dict[str, Any]]) -> None:
    secret = chart.by_kind(default_objects, "Secret")["parley-channel-gateway"]
    assert set(secret["stringData"]) == {"database-url"}
    assert "service-token" not in chart.by_kind(default_objects, "Secret")["parley-shared"]["stringData"]


def test_existing_secrets_replace_the_chart_made_ones(production_objects: list[dict[str, Any]]) -> None:
    assert chart.by_kind(production_objects, "Secret") == {}
    assert "parley-jwks" not in chart.by_kind(production_objects, "ConfigMap")
    for name, spec in chart.pod_specs(production_objects).items():
        secrets, configmaps = references(spec)
        names = {s for s, _, _ in secrets}
        component = pod_labels(chart.by_kind(production_objects, "Deployment")[name])["app.kubernetes.io/component"]
        assert names == {"parley-shared", f"parley-{component}"}, name
        assert "parley-jwks" in configmaps


def test_stream_replicas_are_one_by_default_and_three_in_production(
    default_objects: list[dict[str, Any]], production_objects: list[dict[str, Any]]
) -> None:
    for objects, replicas in ((default_objects, "1"), (production_objects, "3")):
        for deployment in chart.by_kind(objects, "Deployment").values():
            assert config_env(objects, deployment)["PARLEY_STREAM_REPLICAS"] == replicas


def test_configuration_changes_roll_the_pods() -> None:
    a = chart.by_kind(chart.render(), "Deployment")["parley-contacts"]
    b = chart.by_kind(chart.render(set_values=["logLevel=DEBUG"]), "Deployment")["parley-contacts"]
    key = "checksum/config"
    assert (
        a["spec"]["template"]["metadata"]["annotations"][key] != b["spec"]["template"]["metadata"]["annotations"][key]
    )


# ---- metrics scraping ------------------------------------------------------------------------------------


def test_without_the_prometheus_operator_pods_carry_scrape_annotations(default_objects: list[dict[str, Any]]) -> None:
    assert not [o for o in default_objects if o["kind"] in CRD_KINDS]
    for deployment in chart.by_kind(default_objects, "Deployment").values():
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "9100"
    rules = chart.by_kind(default_objects, "ConfigMap")["parley-alert-rules"]
    assert yaml.safe_load(rules["data"]["parley.rules.yaml"])["groups"]


def test_with_the_prometheus_operator_a_pod_monitor_and_rules_are_rendered(
    operator_objects: list[dict[str, Any]],
) -> None:
    monitor = chart.by_kind(operator_objects, "PodMonitor")["parley"]
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "metrics" and endpoint["honorLabels"] is True
    for deployment in chart.by_kind(operator_objects, "Deployment").values():
        assert selector_matches(monitor["spec"]["selector"]["matchLabels"], pod_labels(deployment))
        assert "prometheus.io/scrape" not in deployment["spec"]["template"]["metadata"]["annotations"]
    assert "parley" in chart.by_kind(operator_objects, "PrometheusRule")
    assert "parley-alert-rules" not in chart.by_kind(operator_objects, "ConfigMap")


def test_dashboards_ship_as_configmaps_for_the_grafana_sidecar(default_objects: list[dict[str, Any]]) -> None:
    configmaps = chart.by_kind(default_objects, "ConfigMap")
    dashboards = {n: c for n, c in configmaps.items() if n.startswith("parley-dashboard-")}
    assert set(dashboards) == {"parley-dashboard-overview", "parley-dashboard-service-red"}
    for cm in dashboards.values():
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"


# ---- the development chart ------------------------------------------------------------------------------


def test_dev_chart_declares_nats_and_postgresql_behind_condition_flags() -> None:
    meta = yaml.safe_load((chart.DEV_CHART / "Chart.yaml").read_text())
    deps = {d["name"]: d for d in meta["dependencies"]}
    assert deps["parley"]["repository"] == "file://../parley"
    assert deps["nats"]["condition"] == "nats.enabled"
    assert deps["postgresql"]["condition"] == "postgresql.enabled"
    parley_meta = yaml.safe_load((chart.CHART / "Chart.yaml").read_text())
    assert deps["parley"]["version"] == parley_meta["version"]
    assert "dependencies" not in parley_meta, "the main chart must lint and render without fetching charts"


def test_dev_chart_points_the_services_at_the_in_cluster_nats_and_postgresql(tmp_path: Path) -> None:
    # Render the dev chart offline: the parley chart as an unpacked dependency, remote ones left out
    # (helm dependency update needs their repositories).
    dev = tmp_path / "parley-dev"
    shutil.copytree(chart.DEV_CHART, dev)
    meta = yaml.safe_load((dev / "Chart.yaml").read_text())
    meta["dependencies"] = [d for d in meta["dependencies"] if d["name"] == "parley"]
    (dev / "Chart.yaml").write_text(yaml.safe_dump(meta))
    shutil.copytree(chart.CHART, dev / "charts" / "parley")
    objects = chart.render(dev, release="demo", namespace="dev")
    shared = chart.by_kind(objects, "Secret")["demo-parley-shared"]
    assert shared["stringData"]["nats-url"] == "nats://demo-nats:4222"
    for component, database in (("contacts", "contacts"), ("channel-gateway", "channel_gateway")):
        url = chart.by_kind(objects, "Secret")[f"demo-parley-{component}"]["stringData"]["database-url"]
        assert re.fullmatch(rf"postgresql\+asyncpg://parley:[^@]+@demo-postgresql:5432/{database}", url)
    dev_values = yaml.safe_load((chart.DEV_CHART / "values.yaml").read_text())
    script = dev_values["postgresql"]["primary"]["initdb"]["scripts"]["10-parley-databases.sql"]
    for database in ("contacts", "conversations", "channel_gateway"):
        assert f"CREATE DATABASE {database} " in script
    for obj in objects:
        if obj["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(obj, chart.KUBE_VERSIONS[-1], strict=True)
