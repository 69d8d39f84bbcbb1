"""Serving serves only what was proven, and says when it cannot (issue 14, "serving").

Fast tests: ``fetch_adapter`` against real MLflow (temporary SQLite store, local artifact folder) refuses a version
that is not gated, revoked, or whose weights were swapped together with a rewritten ``manifest.json``, and calls an
artifact store that returns nothing for a while transient (retry), not a refusal.

Slow tests: ONE real service (BentoML -> a real vLLM engine on the tiny base) whose start fails for real (its ledger's
folder is blocked by a file) and whose production version's artifacts are gone for a while, spoken to through the
real ``openai`` client and raw HTTP for ``/livez`` and ``/readyz``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    API_KEY,
    free_port,
    http,
    make_adapter,
    register_version,
    service_env,
    start_mlflow_server,
    start_service,
    stop_mlflow_server,
)
from test_serving import PROMPT

from ftops import adapter as fa
from ftops.errors import FtopsError

MODEL = "trusted"


def artifact_dir(name: str, version: str) -> Path:
    """The local folder in the artifact store holding ``name`` version ``version``'s ``adapter/``."""
    import mlflow
    from mlflow import MlflowClient

    run_id = MlflowClient().get_model_version(name, version).run_id
    return Path(mlflow.get_run(run_id).info.artifact_uri.removeprefix("file://")) / fa.ARTIFACT_PATH


def swap_weights(name: str, version: str, other: Path, forge_digest: bool = False) -> None:
    """Replace the stored weights of ``name`` version ``version`` with ``other``'s and rewrite its manifest.json to
    match them (so the files agree with the manifest); ``forge_digest``: also keep the old ``digest`` field."""
    from ftops.manifest import write_manifest

    stored = artifact_dir(name, version)
    old = json.loads((stored / "manifest.json").read_text())
    shutil.copy(other / "adapter_model.safetensors", stored / "adapter_model.safetensors")
    manifest = write_manifest(stored, {k: v for k, v in old.items() if k not in ("files", "digest")})
    assert manifest["digest"] != old["digest"]
    if forge_digest:
        (stored / "manifest.json").write_text(json.dumps({**manifest, "digest": old["digest"]}, indent=2))


# ------------------------------------------------------------------------------------------- fast: fetch_adapter


def test_versions_not_gated_or_revoked_are_refused_before_download(tiny_base, ftops_home, tmp_path):
    from ftops.serving import adapters
    from ftops.serving.adapters import fetch_adapter

    folder = make_adapter(tiny_base, tmp_path / "a", seed=11)
    ungated = register_version(MODEL, folder, tiny_base, tags={fa.TAG_GATE_VERDICT: None})
    failed = register_version(MODEL, folder, tiny_base, tags={fa.TAG_GATE_VERDICT: "fail"})
    revoked = register_version(
        MODEL,
        folder,
        tiny_base,
        tags={fa.TAG_REVOKED: "true", fa.TAG_REVOKED_BY: "ops@example.com", fa.TAG_REVOKED_REASON: "rolled back"},
    )
    undigested = register_version(MODEL, folder, tiny_base, tags={fa.TAG_ADAPTER_DIGEST: None})
    good = register_version(MODEL, folder, tiny_base)
    expected = {
        ungated: "no passing gate verdict (ftops.gate.verdict=unset)",
        failed: "no passing gate verdict (ftops.gate.verdict=fail)",
        revoked: "revoked by ops@example.com (rolled back)",
        undigested: "carries no ftops.adapter.digest tag",
    }
    for version, message in expected.items():
        with pytest.raises(FtopsError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
            fetch_adapter(MODEL, version, tiny_base)
        assert isinstance(e.value, adapters.RefusedError)
    assert fetch_adapter(MODEL, good, tiny_base).served_name == f"{MODEL}:{good}"


@pytest.mark.parametrize("forge_digest", [False, True], ids=["rewritten-manifest", "forged-digest-field"])
def test_weights_swapped_with_a_rewritten_manifest_are_refused(tiny_base, ftops_home, tmp_path, forge_digest):
    from ftops.serving import adapters
    from ftops.serving.adapters import fetch_adapter

    version = register_version(MODEL, make_adapter(tiny_base, tmp_path / "a", seed=12), tiny_base)
    assert fetch_adapter(MODEL, version, tiny_base).lora_rank == 8
    swap_weights(MODEL, version, make_adapter(tiny_base, tmp_path / "b", seed=13), forge_digest)
    with pytest.raises(FtopsError, match="is not the ftops.adapter.digest") as e:
        fetch_adapter(MODEL, version, tiny_base)
    assert isinstance(e.value, adapters.RefusedError)


def test_an_artifact_store_without_the_files_for_a_while_is_transient(tiny_base, ftops_home, tmp_path):
    from ftops.serving import adapters
    from ftops.serving.adapters import fetch_adapter

    version = register_version(MODEL, make_adapter(tiny_base, tmp_path / "a", seed=14), tiny_base)
    stored = artifact_dir(MODEL, version)
    stored.rename(stored.with_name("away"))
    with pytest.raises(FtopsError, match="the artifact store returned no files") as e:
        fetch_adapter(MODEL, version, tiny_base)
    assert isinstance(e.value, adapters.TransientError)
    stored.with_name("away").rename(stored)
    assert fetch_adapter(MODEL, version, tiny_base).served_name == f"{MODEL}:{version}"


def test_a_tracking_server_stopped_then_restarted_is_a_transient_failure(
    tiny_base, ftops_home, tmp_path, migrated_mlflow_db, monkeypatch
):
    from mlflow import MlflowClient

    from ftops.adapter import alias_version
    from ftops.serving import adapters
    from ftops.serving.adapters import fetch_adapter

    db = tmp_path / "registry.db"
    shutil.copy(migrated_mlflow_db, db)
    port = free_port()
    _, proc = start_mlflow_server(f"sqlite:///{db}", tmp_path, port=port, proxy_artifacts=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)  # MLflow exports the URIs it is given: undone after
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        version = register_version(MODEL, make_adapter(tiny_base, tmp_path / "a", seed=15), tiny_base)
        MlflowClient().set_registered_model_alias(MODEL, "production", version)
        assert alias_version(MODEL, "production") == version
        os.killpg(proc.pid, signal.SIGKILL)  # the server and its workers go at once: the port answers nothing
        proc.wait()
        with pytest.raises(FtopsError, match=f"{MODEL}@production: cannot read the registry") as e:
            alias_version(MODEL, "production")
        assert isinstance(e.value, adapters.TransientError)
        with pytest.raises(FtopsError, match=f"{MODEL} version {version}: cannot read the registry") as e:
            fetch_adapter(MODEL, version, tiny_base)
        assert isinstance(e.value, adapters.TransientError)
        _, proc = start_mlflow_server(f"sqlite:///{db}", tmp_path, port=port, proxy_artifacts=False)  # the blip is over
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
        deadline = time.monotonic() + 600  # retried as the service does: a just-restarted server on a loaded machine
        while True:  # may still time out once or twice (a give-up point, not a timing check)
            try:
                assert alias_version(MODEL, "production") == version
                assert fetch_adapter(MODEL, version, tiny_base).served_name == f"{MODEL}:{version}"
                break
            except adapters.TransientError:
                assert time.monotonic() < deadline
                time.sleep(1)
    finally:
        stop_mlflow_server(proc)


# --------------------------------------------------------------------------------- slow: one real service


def wait_for(what: str, check, proc: subprocess.Popen, log_path: Path, timeout: float = 900):
    """Poll ``check()`` until it returns something truthy; a guard against hangs (the engine starts in minutes on a
    loaded machine), not a speed check. Fails with the tail of the service log."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"service exited {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if result := check():
                return result
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def trust(tiny_base, models_dir, tmp_path_factory):
    """The service (not yet ready): ``MODEL@production`` -> ``good`` whose artifacts are away, a file where the ledger's
    folder must go; ``ungated``, ``revoked``, ``swapped`` and ``later`` (gated) versions registered."""
    home = tmp_path_factory.mktemp("trust-home")
    with service_env(home, models_dir):
        from mlflow import MlflowClient

        from ftops import settings

        work = tmp_path_factory.mktemp("trust-adapters")
        versions = {
            "good": register_version(MODEL, make_adapter(tiny_base, work / "good", seed=21), tiny_base),
            "ungated": register_version(
                MODEL, make_adapter(tiny_base, work / "ungated", seed=22), tiny_base, tags={fa.TAG_GATE_VERDICT: None}
            ),
            "revoked": register_version(
                MODEL,
                make_adapter(tiny_base, work / "revoked", seed=23),
                tiny_base,
                tags={
                    fa.TAG_REVOKED: "true",
                    fa.TAG_REVOKED_BY: "ops@example.com",
                    fa.TAG_REVOKED_REASON: "rolled back: answers drifted",
                },
            ),
            "swapped": register_version(MODEL, make_adapter(tiny_base, work / "swapped", seed=24), tiny_base),
            "later": register_version(MODEL, make_adapter(tiny_base, work / "later", seed=25), tiny_base),
        }
        swap_weights(MODEL, versions["swapped"], make_adapter(tiny_base, work / "other", seed=26))
        MlflowClient().set_registered_model_alias(MODEL, "production", versions["good"])
        stored = artifact_dir(MODEL, versions["good"])
        away = stored.with_name("away")
        stored.rename(away)  # the production version's files are gone for a while
        blocker = home / "blocked"
        blocker.write_text("a file where the ledger's folder must be: the start fails until it goes\n")
        tracking_uri = settings.tracking_uri()
        # bentoml itself, not `ftops serve`: its pre-flight would (rightly) stop at the missing artifacts before the
        # service, whose retrying is what is tested here, starts
        service = start_service(
            home,
            models_dir,
            written_by="tests/test_serving_trust.py",
            adapters=[f"{MODEL}@production"],
            poll_interval_s=1,
            ledger_url=f"sqlite:///{blocker / 'ledger.db'}",
            retry={"initial_s": 1, "max_s": 2, "start_attempts": 2},
            engine={"max_model_len": 2048, "max_lora_rank": 8, "max_loras": 2, "dtype": "bfloat16", "max_num_seqs": 8},
            admin_key=None,
            via_bentoml=True,
        )
        try:
            yield {
                "url": service.url,
                "proc": service.proc,
                "log": service.log,
                "blocker": blocker,
                "stored": stored,
                "away": away,
                "mlflow": tracking_uri,
                **versions,
            }
        finally:
            service.stop()


@pytest.fixture(scope="module")
def client(trust):
    from openai import OpenAI

    return OpenAI(base_url=trust["url"] + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def health(trust, path: str) -> tuple[int, dict]:
    status, _, body = http("GET", trust["url"] + path)
    return status, body


def model_state(trust) -> dict:
    return health(trust, "/readyz")[1]["models"][MODEL]


def chat(client, model: str):
    return client.chat.completions.create(model=model, messages=PROMPT, max_tokens=4, temperature=0)


@pytest.mark.slow
def test_a_failing_start_is_retried_and_livez_fails_after_n_attempts(trust):
    proc, log = trust["proc"], trust["log"]
    status, body = wait_for("/livez answers", lambda: health(trust, "/livez"), proc, log)
    assert "alive" in body, body  # JSON saying whether and why not
    status, body = wait_for("/livez 503", lambda: (s := health(trust, "/livez"))[0] == 503 and s, proc, log)
    assert "the start failed 2 times in a row (last: opening the ledger: FileExistsError" in body["reason"]
    status, body = health(trust, "/readyz")
    assert status == 503 and body["status"] == "dead" and body["start"]["failures"] >= 2
    text = log.read_text()
    assert "start failed (attempt 1, retrying" in text and "start failed (attempt 2, retrying" in text
    trust["blocker"].unlink()  # the cause goes away: the next attempt starts, and /livez recovers
    wait_for("/livez 200 again", lambda: health(trust, "/livez")[0] == 200, proc, log)


@pytest.mark.slow
def test_a_transient_download_failure_is_retried_logged_and_shown_in_readyz(trust, client):
    proc, log = trust["proc"], trust["log"]
    state = wait_for(
        "readyz: retrying twice",
        lambda: (m := model_state(trust))["state"] == "retrying" and m["failures"] >= 2 and m,
        proc,
        log,
    )
    assert "the artifact store returned no files" in state["last_error"] and state["serving_version"] is None
    status, body = health(trust, "/readyz")
    assert status == 503 and body["status"] == "loading"
    assert f"{MODEL}:{trust['good']}" not in body["refused"]  # a passing failure is no refusal
    import openai

    with pytest.raises(openai.APIStatusError) as e:  # it may be served once loaded: 503 with Retry-After, not 404
        chat(client, MODEL)
    assert e.value.status_code == 503 and e.value.body["code"] == "model_unavailable", e.value.body
    assert "the artifact store returned no files" in e.value.body["message"]
    assert e.value.response.headers["retry-after"].isdigit()
    assert log.read_text().count(f"{MODEL}:{trust['good']}: {MODEL} version {trust['good']}: the artifact store") >= 2
    trust["away"].rename(trust["stored"])  # the files are back: the next retry loads them
    wait_for("/readyz 200", lambda: health(trust, "/readyz")[0] == 200, proc, log)
    assert model_state(trust) == {
        "alias": "production",
        "state": "serving",
        "alias_version": trust["good"],
        "serving_version": trust["good"],
    }
    assert chat(client, MODEL).model == f"{MODEL}:{trust['good']}"


@pytest.mark.slow
def test_pinned_versions_not_gated_revoked_or_swapped_answer_404_saying_why(trust, client):
    import openai

    expected = {
        "ungated": "has no passing gate verdict",
        "revoked": "was revoked by ops@example.com (rolled back: answers drifted)",
        "swapped": "is not the ftops.adapter.digest",
    }
    for which, message in expected.items():
        with pytest.raises(openai.NotFoundError) as e:
            chat(client, f"{MODEL}:{trust[which]}")
        assert e.value.body["code"] == "model_not_found" and message in e.value.body["message"], which
    with pytest.raises(openai.NotFoundError) as e:
        chat(client, f"{MODEL}:999")
    assert "does not exist" in e.value.body["message"]
    status, body = health(trust, "/readyz")
    assert status == 200
    for which, message in expected.items():
        assert message in body["refused"][f"{MODEL}:{trust[which]}"]


@pytest.mark.slow
def test_an_alias_moved_to_a_swapped_version_is_refused_and_the_old_one_kept(trust, client):
    from mlflow import MlflowClient

    registry = MlflowClient(tracking_uri=trust["mlflow"], registry_uri=trust["mlflow"])
    registry.set_registered_model_alias(MODEL, "production", trust["swapped"])
    try:
        state = wait_for(
            "readyz: refused",
            lambda: (m := model_state(trust))["alias_version"] == trust["swapped"] and m,
            trust["proc"],
            trust["log"],
        )
        assert state["state"] == "refused" and "is not the ftops.adapter.digest" in state["reason"]
        assert state["serving_version"] == trust["good"]
        assert health(trust, "/readyz")[0] == 200
        assert chat(client, MODEL).model == f"{MODEL}:{trust['good']}"
    finally:
        registry.set_registered_model_alias(MODEL, "production", trust["good"])


@pytest.mark.slow
def test_a_loaded_version_revoked_later_is_no_longer_served(trust, client):
    import openai
    from mlflow import MlflowClient

    pinned = f"{MODEL}:{trust['later']}"
    assert chat(client, pinned).model == pinned
    registry = MlflowClient(tracking_uri=trust["mlflow"], registry_uri=trust["mlflow"])
    # who and why first, the flag last: the watcher may read the tags between two writes
    for tag, value in {fa.TAG_REVOKED_BY: "rollback", fa.TAG_REVOKED_REASON: "bad", fa.TAG_REVOKED: "true"}.items():
        registry.set_model_version_tag(MODEL, trust["later"], tag, value)

    def refused():
        try:
            chat(client, pinned)
        except openai.NotFoundError as e:
            return e.body["message"]
        return None

    message = wait_for("pinned revoked version refused", refused, trust["proc"], trust["log"])
    assert "was revoked by rollback (bad)" in message
    assert pinned not in {m.id for m in client.models.list().data}
    # and out of the engine: vLLM no longer knows the name (unload_lora_adapter said so)
    wait_for(
        "unloaded from vLLM",
        lambda: f"unloaded {pinned} from the engine" in trust["log"].read_text(errors="replace"),
        trust["proc"],
        trust["log"],
    )


@pytest.mark.slow
def test_livez_fails_when_the_engine_dies(trust):
    import psutil

    service = psutil.Process(trust["proc"].pid)
    engines = [p for p in service.children(recursive=True) if "EngineCore" in " ".join(p.cmdline()) + p.name()]
    assert engines, [(p.name(), p.cmdline()) for p in service.children(recursive=True)]
    for p in engines:
        p.kill()
    status, body = wait_for(
        "/livez 503", lambda: (s := health(trust, "/livez"))[0] == 503 and s, trust["proc"], trust["log"]
    )
    assert "engine is dead" in body["reason"]
