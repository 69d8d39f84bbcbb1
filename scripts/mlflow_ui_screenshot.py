"""Screenshot the MLflow UI's page of a registered model (versions, aliases, gate verdicts) in headless Chromium.

    .venv/bin/python scripts/mlflow_ui_screenshot.py [NAME] [--out FILE.png] [--port N]

Starts ``mlflow ui`` on the embedded store (``$FTOPS_HOME``, default ./.ftops) on a free loopback port, waits for
it, lets Chromium (``apt-get install -y chromium``) render ``#/models/NAME`` headlessly, writes the PNG, and stops
the server by its process group. NAME defaults to the first registered model. Prints the PNG's path.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ftops import settings
from ftops.errors import FtopsError
from ftops.names import check_name

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    raise FtopsError("no Chromium found; install it with `apt-get update && apt-get install -y chromium`")


def wait_for(url: str, timeout_s: float, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise FtopsError(f"mlflow ui exited with code {server.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise FtopsError(f"mlflow ui did not answer {url} within {timeout_s:.0f} s")


def screenshot(
    name: str | None, out: Path, port: int | None = None, wait_s: float = 20.0, size: str = "1900,1700"
) -> Path:
    """Start the MLflow UI on the embedded store, screenshot model ``name``'s page into ``out``, stop the UI."""
    import mlflow

    uri = settings.configure_mlflow()
    if not settings.is_embedded():
        raise FtopsError(
            "MLFLOW_TRACKING_URI points at a server: open its UI directly; this script serves the embedded store"
        )
    models = mlflow.MlflowClient().search_registered_models()
    if not models:
        raise FtopsError(f"no registered models in {uri}; run `make demo` or `ftops gate RUN_ID` first")
    name = check_name(name, "registered model name") if name else models[0].name
    if name not in {m.name for m in models}:
        raise FtopsError(f"no registered model {name!r} in {uri} (known: {', '.join(m.name for m in models)})")
    chromium = find_chromium()
    port = port or free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [
            str(mlflow_bin),
            "ui",
            "--backend-store-uri",
            uri,
            "--default-artifact-root",
            settings.artifact_root(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/health", 120, server)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="ftops-chromium-") as profile:
            subprocess.run(
                [
                    chromium,
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--hide-scrollbars",
                    f"--user-data-dir={profile}",
                    f"--window-size={size}",
                    f"--virtual-time-budget={int(wait_s * 1000)}",
                    f"--screenshot={out}",
                    f"{base}/#/models/{name}",
                ],
                check=True,
                capture_output=True,
                timeout=180,
            )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    if not out.is_file() or out.stat().st_size < 10_000:
        raise FtopsError(f"{out}: Chromium wrote no usable screenshot")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help="registered model name (default: the first one)")
    parser.add_argument("--out", type=Path, help="PNG path (default: $FTOPS_HOME/screenshots/mlflow-model-NAME.png)")
    parser.add_argument("--port", type=int, help="port for mlflow ui (default: a free one)")
    parser.add_argument("--wait", type=float, default=20.0, help="seconds of page time Chromium lets the UI render")
    parser.add_argument("--size", default="1900,1700", help="window WIDTH,HEIGHT in pixels (default 1900,1700)")
    args = parser.parse_args(argv)
    out = args.out or settings.home() / "screenshots" / f"mlflow-model-{args.name or 'first'}.png"
    try:
        path = screenshot(args.name, out.resolve(), args.port, args.wait, args.size)
    except (FtopsError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        print(f"mlflow_ui_screenshot: error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
