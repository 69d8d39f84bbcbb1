"""The Kubernetes manifests: schema-valid for the cluster version we document, and their commands are real ftops
commands (parsed by ftops's own CLI parser) with a serving config that the service accepts. A dry run of what can
run here; the cluster itself cannot."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).resolve().parents[1] / "k8s"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
KUBERNETES_VERSION = "1.33"


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    return pod.get("containers", [])


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_schema_valid_and_starts_with_its_command(path):
    assert path.read_text().startswith("# kubectl "), f"{path.name} must start with the command that applies it"
    for doc in _documents(path):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_schema_validation_catches_a_broken_manifest():
    doc = _documents(K8S / "serving.yaml")[2]
    doc["spec"]["ports"][0]["port"] = "eighty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_existing_files():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        assert (K8S / name).is_file(), name


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_ftops_commands_in_manifests_parse(path):
    from ftops.cli import build_parser

    for doc in _documents(path):
        for container in _containers(doc):
            args = container.get("args") or []
            if args[:1] == ["ftops"]:
                build_parser().parse_args(args[1:])  # argparse exits 2 (SystemExit) on a wrong command


def test_serving_config_in_configmap_is_accepted_by_the_service():
    from ftops.serving.config import load_config

    configmap = _documents(K8S / "serving.yaml")[0]
    config = yaml.safe_load(configmap["data"]["serve.yaml"])
    serve = load_config(None, config)
    assert serve.adapter_specs() == [("ticket-extractor", "production")]


def test_gpu_workloads_request_gpus_and_use_the_cluster_mlflow():
    mlflow_service = _documents(K8S / "mlflow.yaml")[1]["metadata"]["name"]
    for name in ("serving.yaml", "train-job.yaml"):
        for doc in _documents(K8S / name):
            for container in _containers(doc):
                assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
                env = {e["name"]: e.get("value") for e in container["env"]}
                assert env["MLFLOW_TRACKING_URI"].startswith(f"http://{mlflow_service}.")
                assert env["HF_HUB_OFFLINE"] == "1"


def test_serving_probes_use_the_service_health_routes():
    deployment = _documents(K8S / "serving.yaml")[1]
    (container,) = _containers(deployment)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    keys = {e["name"] for e in container["env"] if "valueFrom" in e}
    assert {"FTOPS_API_KEY", "FTOPS_ADMIN_KEY"} <= keys, "API keys come from a Secret, never from the manifest"
