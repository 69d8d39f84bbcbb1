"""The guides' whole path on one ``base_url``: upload and fine-tune through OpenAI's API, then chat with
``fine_tuned_model``, against ONE real ``ftops serve`` (BentoML, a real vLLM engine on the tiny base, the fine-tuning
API mounted beside inference, the real executor training and gating as child processes)."""

from __future__ import annotations

import io
import time

import psutil
import pytest
from conftest import ADMIN_KEY, API_KEY, http
from test_jobs_api import _jsonl, _rows

pytestmark = pytest.mark.slow
BASE = "tiny-llama"


@pytest.fixture(scope="module")
def service(base_service):
    """conftest.py's ``base_service`` (shared with tests/test_fuzz.py): jobs trained with
    tests/test_jobs_api.py's ``TRAIN``, gated with its ``POLICY``."""
    return base_service


def test_fine_tune_then_chat_with_fine_tuned_model_on_the_same_base_url(service):
    from openai import OpenAI

    client = OpenAI(base_url=service["url"] + "/v1", api_key=API_KEY, max_retries=0)
    file = client.files.create(file=("tickets.jsonl", io.BytesIO(_jsonl(_rows(200)))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=file.id, model=BASE, suffix="served")
    deadline = time.monotonic() + 900
    train_env = None  # the environment of the job's `ftops train` child, read while it runs
    pauses = []  # engine.pause_while_training: what /readyz and the engine's processes said while the job ran
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job still {job.status}"
        train_env = train_env or _train_child_env(service["pid"])
        engine = http("GET", service["url"] + "/readyz")[2]["engine"]
        if engine["paused"] and len(pauses) < 2:
            # every engine process is stopped, and a request continues it and is answered
            assert set(_engine_states(service["pid"]).values()) == {psutil.STATUS_STOPPED}
            reply = client.chat.completions.create(
                model=BASE, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0
            )
            assert reply.usage.completion_tokens > 0
            assert http("GET", service["url"] + "/readyz")[2]["engine"]["paused"] is False
            pauses.append(engine["pauses"])
        time.sleep(0.2 if train_env is None else 0.5)
    assert job.status == "succeeded", job.error
    # paused while the job trained, continued by a request, paused again once idle while it still trained
    assert len(pauses) == 2 and pauses[1] > pauses[0], pauses
    # and running again once no job trains (the service looks once a second)
    time.sleep(1.5)
    assert http("GET", service["url"] + "/readyz")[2]["engine"]["paused"] is False
    assert psutil.STATUS_STOPPED not in _engine_states(service["pid"]).values()
    # the child trains as `ftops train` runs from a shell: without what vLLM sets in a process that starts an engine
    # (LD_PRELOAD of PyTorch's libgomp, LOCAL_WORLD_SIZE, ...; this pytest process has them too once a test started
    # an engine in it), nor BentoML's plumbing (its Prometheus multiprocess folder would count the child's metrics as
    # the service's)
    assert train_env is not None, "never saw the job's `ftops train` process"
    engine_keys = ("LD_PRELOAD", "LOCAL_WORLD_SIZE", "NUMEXPR_MAX_THREADS", "TORCHINDUCTOR_COMPILE_THREADS")
    inherited = {k: v for k, v in train_env.items() if k in engine_keys}
    inherited |= {k: v for k, v in train_env.items() if k.startswith("BENTOML_") or k == "PROMETHEUS_MULTIPROC_DIR"}
    assert not inherited, inherited
    assert train_env["FTOPS_HOME"] == str(service["home"])
    assert job.fine_tuned_model == f"{BASE}-served:1"
    reply = client.chat.completions.create(
        model=job.fine_tuned_model, messages=[{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0
    )
    assert reply.model == job.fine_tuned_model and reply.usage.completion_tokens > 0
    cards = {m.id: m for m in client.models.list().data}
    assert job.fine_tuned_model in cards
    assert cards[job.fine_tuned_model].model_extra["parent"] == BASE
    # the admin key sees every job
    other = OpenAI(base_url=service["url"] + "/v1", api_key=ADMIN_KEY, max_retries=0)
    assert job.id in [j.id for j in other.fine_tuning.jobs.list().data]


def _engine_states(root: int) -> dict[str, str]:
    """Process name -> status of the vLLM engine's processes (its engine core and workers) under the service."""
    states = {}
    for process in psutil.Process(root).children(recursive=True):
        try:
            if process.name().startswith("VLLM::"):
                states[f"{process.name()}[{process.pid}]"] = process.status()
        except psutil.Error:
            continue
    assert states, "no vLLM engine process under the service"
    return states


def _train_child_env(root: int) -> dict[str, str] | None:
    """The environment of the ``ftops train`` process under the service's process tree, if one runs now."""
    for process in psutil.Process(root).children(recursive=True):
        try:
            if {"ftops.cli", "train"} <= set(process.cmdline()):
                return process.environ()
        except psutil.Error:  # it ended between the listing and the look
            continue
    return None


def test_a_model_promoted_after_the_start_is_served_without_a_restart(service, tiny_base, models_dir, tmp_path):
    """``base_service``'s config lists no adapters, so it discovers (``discover: auto``): a model registered and
    promoted to @production after the service started is listed with the base as parent and answers, within a few
    polls and without a restart; a model at @staging only is not served."""
    from conftest import make_adapter, register_version, service_env
    from openai import OpenAI

    from ftops import settings

    with service_env(service["home"], models_dir):
        client = settings.mlflow_client()  # the service's own registry
        folder = make_adapter(tiny_base, tmp_path / "a", seed=7)
        staged = register_version("staged-only", folder, tiny_base)
        client.set_registered_model_alias("staged-only", "staging", staged)
        version = register_version("promoted-later", folder, tiny_base)
        client.set_registered_model_alias("promoted-later", "production", version)
    settings.configure_mlflow()  # this process's MLflow back on the store its environment names

    api = OpenAI(base_url=service["url"] + "/v1", api_key=API_KEY, max_retries=0)
    deadline = time.monotonic() + 120
    while "promoted-later" not in (cards := {m.id: m for m in api.models.list().data}):
        assert time.monotonic() < deadline, f"promoted-later not served after 120 s: {sorted(cards)}"
        time.sleep(1)
    card = cards["promoted-later"]
    assert card.model_extra["parent"] == BASE and card.model_extra["registry_alias"] == "production"
    assert card.model_extra["registry_version"] == version and "staged-only" not in cards
    reply = api.chat.completions.create(
        model="promoted-later", messages=[{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0
    )
    assert reply.model == f"promoted-later:{version}" and reply.usage.completion_tokens > 0
