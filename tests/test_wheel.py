"""What ``pip install ftops`` puts into site-packages: one top-level name, ``ftops``, and a service that imports
from anywhere (not only from the checkout, where the stage folders would shadow a broken package)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # built from a copy of the tracked files: setuptools writes build/ into the source tree, and a wheel must not
    # depend on anything untracked that happens to lie in the checkout
    source = tmp_path_factory.mktemp("source")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, check=True, capture_output=True, text=True).stdout.split()
    for name in tracked:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out)]
    subprocess.run([*pip_wheel, str(source)], check=True, capture_output=True, text=True, timeout=300)
    (found,) = out.glob("ftops-*.whl")
    return found


def test_the_wheel_has_one_top_level_name_ftops(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"ftops"}
    assert not any(n.startswith("ftops/tiny") for n in names)  # test-only helpers stay in tests/
    for module in (
        "ftops/cli/__init__.py",
        "ftops/expectations/validate.py",
        "ftops/training/job.py",
        "ftops/registry/gate.py",
        "ftops/serving/service.py",
        "ftops/costs/usage.py",
        "ftops/jobs/api.py",
        "ftops/advise/measure.py",
        "ftops/cli/service.py",
        "ftops/serving/ledger_migrations/versions/0001_ledger_2026_12.py",
    ):
        assert module in names
    for data in (
        "ftops/registry/policies/default.yaml",
        "ftops/costs/prices.yaml",
        "ftops/costs/hardware.yaml",
        "ftops/expectations/suites/chat_examples.json",
    ):
        assert data in names, f"{data} is not packaged"
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "ftops = ftops.cli:main" in entry_points and "ftops_cpu_lora = ftops.cpu_lora:register" in entry_points


def test_the_installed_service_imports_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    probe = (
        "import importlib.util, ftops.serving.service as s, ftops.registry.policy as p;"
        "print(s.__file__); print(p.DEFAULT_POLICY.is_file());"
        "print([n for n in ('training', 'serving', 'registry', 'expectations', 'costs', 'jobs', 'advise', 'cli')"
        " if importlib.util.find_spec(n)])"
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    r = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    service_file, policy_found, bare = r.stdout.strip().splitlines()[-3:]
    assert Path(service_file).is_relative_to(site)  # the wheel's copy, not the checkout's
    assert policy_found == "True"
    assert bare == "[]"


def test_the_bento_installs_ftops_and_its_built_service_imports(wheel, tmp_path):
    """``make bento``'s build, offline, from the repository's own bentofile.yaml: the Bento carries the ftops wheel
    (the one pyproject.toml's version names) and pins the extras it serves with; the service it names imports from
    that wheel alone, run from the Bento's own folder."""
    import tomllib

    import yaml

    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (named_wheel,) = bentofile["python"]["wheels"]
    assert Path(named_wheel).name == wheel.name, "bentofile.yaml names another ftops version than pyproject.toml"
    extras = project["optional-dependencies"]
    assert bentofile["python"]["packages"] == extras["cpu"] + extras["postgres"]
    assert bentofile["service"] == "ftops.cli.service:FtopsLLM"  # what `ftops serve` runs (ftops/cli/__init__.py)

    context = tmp_path / "context"  # the build context: bentofile.yaml, what it includes, and the wheel where it says
    (context / named_wheel).parent.mkdir(parents=True)
    shutil.copy2(wheel, context / named_wheel)
    shutil.copy2(REPO / "bentofile.yaml", context / "bentofile.yaml")
    for pattern in bentofile["include"]:
        (context / pattern).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / pattern, context / pattern)
    home = tmp_path / "bentoml-home"
    env = {**os.environ, "BENTOML_HOME": str(home), "HF_HUB_OFFLINE": "1", "BENTOML_DO_NOT_TRACK": "True"}
    bentoml = Path(sys.executable).with_name("bentoml")
    r = subprocess.run(
        [str(bentoml), "build", str(context)], cwd=context, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (bento,) = [p for p in (home / "bentos" / "ftops").iterdir() if p.name != "latest"]
    (packed,) = (bento / "env" / "python" / "wheels").glob("ftops-*.whl")
    assert packed.read_bytes() == wheel.read_bytes()
    requirements = (bento / "env" / "python" / "requirements.txt").read_text().split()
    assert set(extras["cpu"] + extras["postgres"]) <= set(requirements)

    site = tmp_path / "site"  # what the Bento's install.sh installs, without its dependencies (this venv has them)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(packed)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    probe = (
        f"import bentoml, ftops, ftops.serving.service as s; svc = bentoml.load({str(bento)!r});"
        "print(ftops.__file__); print(svc.name);"
        "print(sorted([path for app, path, _ in svc.mount_apps if app is s._gateway]"
        " + [p for m in s._gateway.mounts for p in m.prefixes]))"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=bento / "src",
        env={**env, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ftops_file, name, routes = r.stdout.strip().splitlines()[-3:]
    assert Path(ftops_file).is_relative_to(site)  # the Bento's ftops, not the checkout's
    assert name == "ftops"
    # the gateway (inference, health, OpenAPI) at the root, and the fine-tuning API composed beside it
    assert routes == str(["/", "/v1/files", "/v1/fine_tuning"])
