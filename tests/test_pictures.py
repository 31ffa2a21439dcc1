"""Pictures in the Prefect UI: published to the picture server (``python -m pipeline.pictures``) that
scripts/prefect_server.sh runs beside the Prefect server, linked by http URL from the artifacts.

The demo-sized run goes through the demo's deployments on a real local Prefect server (UI on) and
fetches every image URL of every artifact; where Chromium and chromedriver are installed, a
headless Chromium also opens each artifact page of the Prefect UI and checks its pictures loaded."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.pictures import DIR_ENV, PNG_SIGNATURE, URL_ENV, PictureServer, picture_markdown

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str, bytes]:
    """(HTTP status, Content-Type, body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), b""


def _answers(url: str) -> bool:
    try:
        return _get(url)[0] == 200
    except OSError:
        return False


def _wait_until_answers(url: str, proc: subprocess.Popen, limit_s: float = 120.0) -> None:
    """Poll ``url`` until it answers 200 while ``proc`` runs. ``limit_s`` is a hang guard (a
    server's start-up on 2 busy cores can take many seconds), not a speed requirement."""
    deadline = time.monotonic() + limit_s
    while not _answers(url):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else f"exit {proc.returncode}"
        assert time.monotonic() < deadline, f"{url} did not answer within {limit_s:g} s"
        time.sleep(0.1)


def _png(path: Path, value: int) -> Path:
    Image.fromarray(np.full((8, 12, 3), value, np.uint8)).save(path, format="PNG")
    return path


@pytest.fixture
def picture_server(tmp_path):
    """``python -m pipeline.pictures`` on a free port, serving ``tmp_path / "served"``."""
    root, port = tmp_path / "served", _free_port()
    proc = subprocess.Popen([PY, "-m", "pipeline.pictures", "--dir", str(root), "--port", str(port)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_answers(url + "/health", proc)
        yield PictureServer(url=url, root=root)
    finally:
        proc.terminate()
        proc.wait(10)


def test_without_a_picture_server_a_picture_is_its_path(tmp_path, monkeypatch):
    monkeypatch.delenv(URL_ENV, raising=False)
    monkeypatch.delenv(DIR_ENV, raising=False)
    png = _png(tmp_path / "grid.png", 10)
    assert picture_markdown(png, "grid") == f"grid: `{png.resolve()}`"
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:1")
    with pytest.raises(ValueError, match=f"{DIR_ENV} is not"):
        picture_markdown(png, "grid")
    monkeypatch.setenv(DIR_ENV, str(tmp_path))
    monkeypatch.setenv(URL_ENV, "file:///tmp")
    with pytest.raises(ValueError, match="must be an http"):
        picture_markdown(png, "grid")


def test_a_published_picture_is_served_over_http_as_the_same_png(picture_server, tmp_path, monkeypatch):
    monkeypatch.setenv(URL_ENV, picture_server.url)
    monkeypatch.setenv(DIR_ENV, str(picture_server.root))
    png = _png(tmp_path / "step 3.png", 200)
    md = picture_markdown(png, "samples [step 3]")
    (url,) = IMAGE_LINK.findall(md)
    assert md.startswith("![samples (step 3)](") and url.startswith(picture_server.url + "/")
    status, kind, body = _get(url)
    assert (status, kind, body) == (200, "image/png", png.read_bytes())
    assert picture_markdown(png, "again") == f"![again]({url})"  # same picture, same file, same URL
    other = _png(tmp_path / "step 3.png", 100)  # new content under the same name: a new URL, the old one intact
    (url2,) = IMAGE_LINK.findall(picture_markdown(other, "newer"))
    assert url2 != url and _get(url2)[2] == other.read_bytes() and _get(url)[0] == 200
    assert len(list(picture_server.root.iterdir())) == 2
    (tmp_path / "notes.txt").write_text("not a picture")
    with pytest.raises(ValueError, match="not a PNG"):
        picture_markdown(tmp_path / "notes.txt", "notes")
    (picture_server.root / "secret.txt").write_text("x")
    assert _get(picture_server.url + "/secret.txt")[0] == 404  # PNG files only
    assert _get(picture_server.url + "/")[0] == 404  # no listing
    assert _get(picture_server.url + "/health")[2] == b"ok\n"


# -- a demo-sized run through the demo's deployments --------------------------------------------

def _api(url: str, body: dict | None = None):
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     method="POST" if body is not None else "GET",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.loads(resp.read())


def _image_urls(artifact: dict) -> list[str]:
    data = artifact["data"] if isinstance(artifact["data"], str) else json.dumps(artifact["data"])
    if artifact["type"] == "image":
        return [data]
    return IMAGE_LINK.findall(data)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo's four deployments (export, prepare, train a few steps, Everest inpainting) served by
    ``python -m flows.serve`` (cwd = a temp dir, so ``./demo_out`` lands there) on the Prefect server
    and picture server of scripts/prefect_server.sh (Prefect UI on). Yields env, work dir, artifacts."""
    work = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "PREFECT_PORT": str(_free_port()), "EDGEFILL_PICTURES_PORT": str(_free_port()),
           "PREFECT_HOME": str(work / "prefect-home"), "PYTHON": PY, "PREFECT_SERVER_UI_ENABLED": "true",
           "EDGEFILL_REGISTRY": str(work / "registry"), "PYTHONPATH": str(REPO)}
    for name in ("PREFECT_API_URL", URL_ENV, DIR_ENV):
        env.pop(name, None)
    started = subprocess.run(["bash", "scripts/prefect_server.sh", "start"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        exports = dict(line.removeprefix("export ").split("=", 1)
                       for line in started.stdout.splitlines() if line.startswith("export "))
        assert set(exports) == {"PREFECT_API_URL", URL_ENV, DIR_ENV}
        assert started.stdout.strip().splitlines()[-1].startswith("export PREFECT_API_URL=")
        env.update(exports)
        log = work / "serve.log"
        with open(log, "w") as out:
            serve = subprocess.Popen([PY, "-m", "flows.serve"], cwd=work, env=env, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            runs = [["export-landsat/default"], ["prepare-dataset/default"],
                    ["train-model/default", "-p", 'config={"max_steps": 3, "overrides": ["train.log_every=1"]}',
                     "-p", "pairs_per_bin=1"],
                    ["inpaint-scene/everest-demo"]]
            waited = subprocess.run([PY, "-m", "flows.cli", "wait-for-deployments", *(r[0] for r in runs),
                                     "--timeout", "180"],
                                    cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
            assert waited.returncode == 0, waited.stderr + log.read_text()[-3000:]
            for args in runs:
                run = subprocess.run([PY, "-m", "prefect", "deployment", "run", *args, "--watch"], cwd=work, env=env,
                                     capture_output=True, text=True, timeout=900)
                assert run.returncode == 0 and "Completed" in run.stdout + run.stderr, \
                    args[0] + run.stdout[-2000:] + run.stderr[-2000:] + log.read_text()[-3000:]
        finally:
            os.killpg(serve.pid, signal.SIGTERM)
            serve.wait(60)
        artifacts = _api(env["PREFECT_API_URL"] + "/artifacts/filter", {})
        yield {"env": env, "work": work, "artifacts": artifacts}
    finally:
        subprocess.run(["bash", "scripts/prefect_server.sh", "stop"], cwd=REPO, env=env, timeout=120)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # four deployments on 2 busy cores (the fixture's time counts here)
def test_every_picture_of_every_artifact_is_a_png_over_http(demo_run):
    pictures_url = demo_run["env"][URL_ENV] + "/"
    outputs = {_sha(p.read_bytes()) for p in (demo_run["work"] / "demo_out").rglob("*.png")}
    by_key: dict[str, list[str]] = {}
    for artifact in demo_run["artifacts"]:
        text = json.dumps(artifact["data"])
        assert "file://" not in text and "data:image" not in text, artifact["key"]
        by_key.setdefault(artifact["key"] or "", []).extend(_image_urls(artifact))
    assert len(by_key["export-landsat"]) == 1 and len(by_key["inpaint-everest-demo"]) == 1
    assert len(by_key["train-model"]) == 2  # the last sample grid and the loss plot
    urls = [u for us in by_key.values() for u in us]
    for url in urls:
        assert url.startswith(pictures_url), url
        status, kind, body = _get(url)
        assert status == 200 and kind == "image/png" and body.startswith(PNG_SIGNATURE), url
        assert _sha(body) in outputs, f"{url} is not one of the run's pictures"


def _webdriver(base: str, method: str, path: str, body: dict | None = None):
    request = urllib.request.Request(base + path, data=json.dumps(body).encode() if body is not None else None,
                                     method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as resp:
        return json.loads(resp.read())["value"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="needs chromium and chromedriver (apt-get install chromium chromium-driver)")
def test_the_prefect_ui_shows_every_picture_in_headless_chromium(demo_run):
    """W3C WebDriver over plain HTTP: each artifact page's pictures are loaded (naturalWidth > 0)."""
    env, port = demo_run["env"], _free_port()
    ui = env["PREFECT_API_URL"].removesuffix("/api")
    driver = subprocess.Popen(["chromedriver", f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answers(base + "/status", driver)
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": shutil.which("chromium"), "args": CHROME_FLAGS}}}}
        session = "/session/" + _webdriver(base, "POST", "/session", caps)["sessionId"]
        script = ("return Array.from(document.images).filter(i => i.src.startsWith(arguments[0]))"
                  ".map(i => [i.src, i.complete, i.naturalWidth])")
        checked = 0
        for artifact in demo_run["artifacts"]:
            urls = _image_urls(artifact)
            if not urls:
                continue
            _webdriver(base, "POST", session + "/url", {"url": f"{ui}/artifacts/artifact/{artifact['id']}"})
            shown: list = []
            deadline = time.monotonic() + 300  # a hang guard: the single-page app renders, then loads them
            while time.monotonic() < deadline:
                shown = _webdriver(base, "POST", session + "/execute/sync", {"script": script, "args": [env[URL_ENV]]})
                if len(shown) == len(urls) and all(complete for _, complete, _ in shown):
                    break
                time.sleep(0.5)
            assert sorted(src for src, _, _ in shown) == sorted(urls), artifact["key"]
            assert all(width > 0 for _, _, width in shown), (artifact["key"], shown)
            checked += len(shown)
        _webdriver(base, "DELETE", session)
        assert checked == 4
    finally:
        driver.terminate()
        driver.wait(30)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_script_stops_the_prefect_and_picture_servers_together(demo_run):
    env = demo_run["env"]
    status = subprocess.run(["bash", "scripts/prefect_server.sh", "status"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and env[URL_ENV] in status.stdout
    assert _answers(env[URL_ENV] + "/health")
    subprocess.run(["bash", "scripts/prefect_server.sh", "stop"], cwd=REPO, env=env, check=True, timeout=120)
    assert not _answers(env[URL_ENV] + "/health") and not _answers(env["PREFECT_API_URL"] + "/health")
    status = subprocess.run(["bash", "scripts/prefect_server.sh", "status"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 1 and "not running" in status.stdout
