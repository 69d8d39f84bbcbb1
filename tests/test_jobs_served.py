"""The guides' whole path on one ``base_url``: upload and fine-tune through OpenAI's API, then chat with
``fine_tuned_model``, against ONE real ``ftops serve`` (BentoML, a real vLLM engine on the tiny base, the fine-tuning
API mounted beside inference, the real executor training and gating as child processes)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import pytest
from test_jobs_api import POLICY, TRAIN, _jsonl, _rows
from test_serving import ADMIN_KEY, API_KEY, REPO, free_port, wait_ready

pytestmark = pytest.mark.slow
BASE = "tiny-llama"


@pytest.fixture(scope="module")
def service(tiny_base, models_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("jobs-served")
    (home / "train.yaml").write_text(TRAIN)
    (home / "policy.yaml").write_text(POLICY)
    config = home / "serve.yaml"
    config.write_text(
        "# ftops serve --config serve.yaml (written by tests/test_jobs_served.py)\n"
        f"base: {BASE}\nadapters: []\npoll_interval_s: 2\n"
        "engine: {max_model_len: 512, max_lora_rank: 8, max_loras: 2, dtype: bfloat16, max_num_seqs: 8}\n"
        f"jobs:\n  train_config: {home / 'train.yaml'}\n  policy: {home / 'policy.yaml'}\n  poll_s: 0.5\n"
        "  gate_options: [--engine, transformers, --max-new-tokens, '4', --no-regression]\n"
    )
    port = free_port()
    env = {
        **os.environ,
        "FTOPS_HOME": str(home),
        "FTOPS_MODELS": str(models_dir),
        "FTOPS_API_KEY": API_KEY,
        "FTOPS_ADMIN_KEY": ADMIN_KEY,
        "BENTOML_HOME": str(home / "bentoml"),
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftops.cli", "serve", "--config", str(config), "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, home / "server.log")
        yield {"url": url, "home": home}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_fine_tune_then_chat_with_fine_tuned_model_on_the_same_base_url(service):
    from openai import OpenAI

    client = OpenAI(base_url=service["url"] + "/v1", api_key=API_KEY, max_retries=0)
    file = client.files.create(file=("tickets.jsonl", io.BytesIO(_jsonl(_rows(200)))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=file.id, model=BASE, suffix="served")
    deadline = time.monotonic() + 900
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job still {job.status}"
        time.sleep(2)
    assert job.status == "succeeded", job.error
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
