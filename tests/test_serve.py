"""`glass serve` and `glass report` with the real parts.

The service runs as a real process (`python -m glass_ad.cli serve` on a free localhost port) on a tiny
model trained once for the module (64 px, EfficientNet-Lite0, 1 epoch); requests go through an HTTP
client; the log is a real SQLite file, and a throwaway PostgreSQL cluster when the server binaries are
installed. The page is loaded in headless Chromium when chromium and chromedriver are installed. Every
process started here is stopped by its fixture.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
sqlalchemy = pytest.importorskip("sqlalchemy")

from glass_ad.config import make_config  # noqa: E402
from glass_ad.data.demo_data import make_demo_dataset  # noqa: E402
from glass_ad.inference.predict import Detector  # noqa: E402
from glass_ad.serve.batching import BatcherClosed, MicroBatcher  # noqa: E402
from glass_ad.serve.loadtest import run_load  # noqa: E402
from glass_ad.serve.report import aggregate, write_report  # noqa: E402
from glass_ad.serve.store import SCHEMA_VERSION, DatabaseError, InspectionLog  # noqa: E402
from glass_ad.training.trainer import train  # noqa: E402

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_UPLOAD_MB = 1.0
LOAD_REQUESTS = int(os.environ.get("GLASS_SERVE_LOAD_REQUESTS", "400"))  # benchmarks/serve_load.py: 2,000


# ---------------------------------------------------------------------------------------------------
# A tiny model, images, and a service process


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("data"), n_train=24, n_test_good=4, n_test_defect=4, size=64)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("run")
    config = make_config("fast", epochs=1, image_size=64, backbone="efficientnet_lite0", early_stopping=False, num_threads=1)
    train(data, folder, config, progress=False, echo=lambda _: None)
    torch.set_num_threads(previous)
    return folder


@pytest.fixture(scope="module")
def images(data) -> dict[str, Path]:
    test = data / "test"
    return {
        "good": sorted((test / "good").glob("*.png"))[0],
        "defect": sorted((test / "scratch").glob("*.png"))[0],
        "spot": sorted((test / "spot").glob("*.png"))[0],
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, process: subprocess.Popen, url: str, data_dir: Path, log_path: Path) -> None:
        self.process, self.url, self.data_dir, self.log_path = process, url, data_dir, log_path

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=30)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextmanager
def serve(run_dir: Path, data_dir: Path, *extra: str, token: str | None = TOKEN, ready: bool = True) -> Iterator[Server]:
    """`glass serve` as a child process on a free port; stopped (SIGTERM, then SIGKILL) on exit."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"{data_dir.name}-server.log"
    command = [
        sys.executable, "-m", "glass_ad.cli", "serve", str(run_dir), "--port", str(port), "--data-dir", str(data_dir),
        "--threads", "1", "--max-upload-mb", str(MAX_UPLOAD_MB), "--log-level", "warning", *extra,
    ]  # fmt: skip
    if token:
        command += ["--token", token]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("GLASS_SERVE_TOKEN", None)
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    server = Server(process, f"http://127.0.0.1:{port}", data_dir, log_path)
    try:
        if ready:
            wait_ready(server)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def wait_ready(server: Server, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=server.url, timeout=5) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                pytest.fail(f"glass serve exited with {server.process.returncode}:\n{server.output()}")
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    pytest.fail(f"glass serve not ready after {timeout} s:\n{server.output()}")


@pytest.fixture(scope="module")
def server(run, tmp_path_factory) -> Iterator[Server]:
    with serve(run, tmp_path_factory.mktemp("service") / "data") as started:
        yield started


@pytest.fixture(scope="module")
def api(server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def rows_in(url: str) -> list[dict]:
    """The inspections table read directly (not through the service)."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(sqlalchemy.text("SELECT * FROM inspections ORDER BY id")).mappings()]
    finally:
        engine.dispose()


def sqlite_url(server: Server) -> str:
    return f"sqlite:///{server.data_dir / 'inspections.db'}"


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------
# Health, token, models, OpenAPI


def test_health_is_public_everything_else_needs_the_token(server):
    with server.client(token=None) as anonymous:
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        assert anonymous.get("/readyz").json()["status"] == "ready"
        for path in ("/v1/models", "/metrics", "/", "/v1/inspections", "/openapi.json", "/static/app.js"):
            response = anonymous.get(path)
            assert response.status_code == 401, path
            assert "token" in response.json()["detail"]
        assert anonymous.post("/v1/models/run/inspect", content=b"x", headers={"Content-Type": "image/png"}).status_code == 401
    with server.client(token="wrong") as wrong:
        assert wrong.get("/v1/models").status_code == 401
    # The page's way in: /?token= sets an HttpOnly cookie, then the API answers the browser.
    with server.client(token=None) as browser:
        response = browser.get("/", params={"token": TOKEN}, follow_redirects=False)
        assert response.status_code == 303
        assert "httponly" in response.headers["set-cookie"].lower()
        assert browser.get("/v1/models").status_code == 200
        assert "<title>glass-ad inspection</title>" in browser.get("/").text


def test_models_describe_what_is_loaded(api, run):
    info = api.get("/v1/models").json()
    assert info["status"] == "ready" and info["log"]["backend"] == "sqlite"
    (model,) = info["models"]
    detector = Detector.load(run)
    assert model["name"] == run.name
    assert len(model["version"]) == 16 and int(model["version"], 16) >= 0
    assert model["backbone"] == "efficientnet_lite0" and model["image_size"] == 64
    assert model["thresholds"]["image"] == pytest.approx(detector.image_threshold)
    assert model["thresholds"]["pixel"] == pytest.approx(detector.pixel_threshold)
    assert model["training"]["train_images"] > 0 and model["training"]["data"]
    scale = model["color_scale"]
    assert scale["min"] < scale["pixel_threshold"] < scale["max"]
    point = model["operating_point"]  # what the OK/NG threshold promises, with its evidence
    assert point["line"] == detector.operating_line() and point["image_threshold"] == pytest.approx(detector.image_threshold)
    assert point["line"].startswith("threshold") and "false-alarm rate" in point["line"]
    assert api.get(f"/v1/models/{run.name}").json() == model
    assert api.get("/v1/models/nope").status_code == 404


def test_openapi_schema_matches_the_routes(api, run):
    schema = api.get("/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/v1/models", "/v1/models/{name}/inspect", "/v1/models/{name}/inspect-batch", "/v1/inspections",
        "/v1/inspections/{inspection_id}", "/v1/inspections/{inspection_id}/review", "/healthz", "/readyz", "/metrics",
    ):  # fmt: skip
        assert path in paths, path
    inspect = paths["/v1/models/{name}/inspect"]["post"]
    assert set(inspect["requestBody"]["content"]) == {"multipart/form-data", "application/octet-stream", "image/*"}
    assert {"400", "401", "404", "413", "415", "503"} <= set(inspect["responses"])
    result = schema["components"]["schemas"]["InspectResult"]
    assert result["properties"]["decision"]["enum"] == ["normal", "anomalous"]
    assert {"score", "normalized_score", "threshold", "model_version", "timing"} <= set(result["required"])
    # The answer really has the fields the schema promises.
    answer = api.post(f"/v1/models/{run.name}/inspect", content=png(np.full((32, 32, 3), 128, np.uint8)),
                      headers={"Content-Type": "image/png"}).json()  # fmt: skip
    assert set(result["required"]) <= set(answer)


# ---------------------------------------------------------------------------------------------------
# Inspecting


def test_inspect_gives_the_detectors_numbers_and_logs_them(api, server, run, images):
    detector = Detector.load(run)
    for kind, path in images.items():
        expected = detector(str(path))
        body = path.read_bytes()
        multipart = api.post(f"/v1/models/{run.name}/inspect", files={"file": (path.name, body, "image/png")})
        raw = api.post(f"/v1/models/{run.name}/inspect", content=body, headers={"Content-Type": "application/octet-stream"})
        for response in (multipart, raw):
            assert response.status_code == 200, response.text
            result = response.json()
            assert result["score"] == pytest.approx(expected.score, abs=1e-5), kind
            assert result["normalized_score"] == pytest.approx(expected.normalized, abs=1e-5)
            assert result["decision"] == expected.decision
            assert result["threshold"] == pytest.approx(detector.image_threshold)
            assert result["model"] == run.name and result["width"] == 64 and result["height"] == 64
            assert result["engine"] == "torch" and result["precision"] == "fp32"
            assert result["timing"]["total_ms"] > 0
        assert multipart.json()["filename"] == path.name and raw.json().get("filename") is None
        row = api.get(f"/v1/inspections/{multipart.json()['id']}").json()
        assert row["image_sha256"] == multipart.json()["image_sha256"] == __import__("hashlib").sha256(body).hexdigest()
    stored = {r["id"]: r for r in rows_in(sqlite_url(server))}
    assert stored[multipart.json()["id"]]["score"] == pytest.approx(multipart.json()["score"])


def test_defects_are_flagged_more_than_good_parts(api, run, images):
    scores = {
        kind: api.post(f"/v1/models/{run.name}/inspect", content=path.read_bytes(), headers={"Content-Type": "image/png"}).json()["score"]
        for kind, path in images.items()
    }
    assert max(scores["defect"], scores["spot"]) > scores["good"]


def test_overlay_and_mask_links_and_inline(api, server, run, images):
    body = images["defect"].read_bytes()
    result = api.post(f"/v1/models/{run.name}/inspect", params={"overlay": "true", "inline": "true"},
                      files={"file": ("../../etc/evil name.png", body, "image/png")}).json()  # fmt: skip
    assert result["filename"] == "evil name.png"  # folders stripped; it is never used as a path anyway
    overlay = api.get(result["overlay_url"])
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
    picture = np.asarray(Image.open(io.BytesIO(overlay.content)))
    assert picture.shape == (64, 3 * 64, 3)  # original | heatmap | region, no title bar
    mask = np.asarray(Image.open(io.BytesIO(api.get(result["mask_url"]).content)))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    assert (mask > 0).mean() == pytest.approx(result["region_fraction"])
    # The service draws the same region as the Detector (glass predict, the runtime).
    (expected,) = Detector.load(run).predict([str(images["defect"])])
    assert result["region_fraction"] == pytest.approx(float(expected.region.mean()), abs=1e-3)
    assert base64.b64decode(result["overlay_png_base64"]) == overlay.content
    # Pictures live inside DATA/overlays; nothing is left in the upload scratch folder.
    files = [p for p in server.data_dir.rglob("*.png")]
    assert files and all(p.is_relative_to(server.data_dir / "overlays") for p in files)
    assert not any((server.data_dir / "incoming").iterdir())
    assert api.get("/v1/inspections/999999/overlay.png").status_code == 404
    plain = api.post(f"/v1/models/{run.name}/inspect", content=body, headers={"Content-Type": "image/png"}).json()
    assert "overlay_url" not in plain
    assert api.get(f"/v1/inspections/{plain['id']}/overlay.png").status_code == 404
    colorbar = api.get("/v1/colorbar.png")
    assert colorbar.status_code == 200 and Image.open(io.BytesIO(colorbar.content)).size == (16, 256)


def test_bad_requests_get_clear_4xx_and_are_not_logged(api, server, run):
    before = len(rows_in(sqlite_url(server)))
    url = f"/v1/models/{run.name}/inspect"
    cases = [
        (dict(files={"file": ("notes.png", b"this is not an image", "image/png")}), 400, "cannot read image 'notes.png': not an image or corrupt"),
        (dict(files={"file": ("empty.png", b"", "image/png")}), 400, "file is empty"),
        (dict(content=png(np.zeros((4, 4, 3), np.uint8)), headers={"Content-Type": "image/png"}), 400, "smaller than the minimum 8x8"),
        (dict(content=b"x" * int(MAX_UPLOAD_MB * 1024 * 1024 + 10), headers={"Content-Type": "image/png"}), 413, "larger than the limit"),
        (dict(content=b"hello", headers={"Content-Type": "text/plain"}), 415, "unsupported content type"),
        (dict(files={"other": ("a.png", b"x", "image/png")}), 400, "field 'file'"),
        (dict(content=b"--x\r\nbroken", headers={"Content-Type": "multipart/form-data; boundary=x"}), 400, "multipart"),
    ]
    for kwargs, status, message in cases:
        response = api.post(url, **kwargs)
        assert response.status_code == status, (message, response.text)
        assert message in response.json()["detail"]
    # Chunked upload (no Content-Length) over the limit is refused too.
    def chunks():
        for _ in range(int(MAX_UPLOAD_MB * 4) + 1):
            yield b"y" * 256 * 1024

    response = api.post(url, content=chunks(), headers={"Content-Type": "image/png"})
    assert response.status_code == 413
    assert api.post("/v1/models/missing/inspect", content=b"x", headers={"Content-Type": "image/png"}).status_code == 404
    assert len(rows_in(sqlite_url(server))) == before


def test_batch_endpoint_answers_per_image(api, run, images):
    files = [
        ("files", ("good.png", images["good"].read_bytes(), "image/png")),
        ("files", ("broken.png", b"nope", "image/png")),
        ("files", ("defect.png", images["defect"].read_bytes(), "image/png")),
    ]
    response = api.post(f"/v1/models/{run.name}/inspect-batch", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == [0, 1, 2]
    assert [r["status"] for r in results] == [200, 400, 200]
    assert "not an image or corrupt" in results[1]["error"] and "result" not in results[1]
    single = api.post(f"/v1/models/{run.name}/inspect", content=images["defect"].read_bytes(), headers={"Content-Type": "image/png"})
    assert results[2]["result"]["score"] == pytest.approx(single.json()["score"], abs=1e-6)
    too_many = [("files", (f"{i}.png", b"x", "image/png")) for i in range(33)]
    too_many_answer = api.post(f"/v1/models/{run.name}/inspect-batch", files=too_many)
    assert too_many_answer.status_code == 400 and "more than 32 images" in too_many_answer.json()["detail"]


def test_batch_echoes_the_logged_file_name(api, run, images):
    files = [
        ("files", ("../../etc/passwd", images["good"].read_bytes(), "image/png")),
        ("files", ("..\\..\\boot.ini", b"nope", "image/png")),
    ]
    results = api.post(f"/v1/models/{run.name}/inspect-batch", files=files).json()["results"]
    assert [r["filename"] for r in results] == ["passwd", "boot.ini"]  # as stored, never the client's path
    assert results[0]["result"]["filename"] == "passwd"
    assert api.get(f"/v1/inspections/{results[0]['result']['id']}").json()["filename"] == "passwd"


def _vm_peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def test_huge_images_get_413_from_their_header_whatever_the_format(api, server, run):
    """Small files declaring huge images: measured and refused before decoding, in every decoder's format
    (a 3 MB Radiance HDR of 7000×7000 pixels once grew the process by 4 GB and was answered 200)."""
    from test_serve_images import HUGE_HEADERS

    peak = _vm_peak_kb(server.process.pid)
    for name, body in sorted(HUGE_HEADERS.items()):
        start = time.monotonic()
        response = api.post(f"/v1/models/{run.name}/inspect", files={"file": (name, body, "application/octet-stream")})
        assert response.status_code == 413, (name, response.text)
        side = 30000 if name == "bomb.png" else 7000
        assert response.json()["detail"] == f"'{name}' is {side}x{side} pixels, more than the limit of 40000000 pixels"
        assert time.monotonic() - start < 5, name
    assert _vm_peak_kb(server.process.pid) - peak < 200_000  # nothing was decoded
    assert not any((server.data_dir / "incoming").iterdir())
    assert f'glass_rejected_images_total{{model="{run.name}",reason="too_large"}}' in api.get("/metrics").text


# ---------------------------------------------------------------------------------------------------
# The log: paging, filters, reviews, report, metrics


def test_log_pages_and_filters(api, run, images):
    for _ in range(3):
        api.post(f"/v1/models/{run.name}/inspect", content=images["good"].read_bytes(), headers={"Content-Type": "image/png"})
    everything = api.get("/v1/inspections", params={"limit": 500, "total": "true"}).json()
    ids = [item["id"] for item in everything["items"]]
    assert ids == sorted(ids, reverse=True) and everything["total"] == len(ids)
    pages, before = [], None
    while True:
        page = api.get("/v1/inspections", params={"limit": 4, **({"before_id": before} if before else {})}).json()
        pages += [item["id"] for item in page["items"]]
        before = page["next_before_id"]
        if before is None:
            break
    assert pages == ids
    for decision in ("normal", "anomalous"):
        items = api.get("/v1/inspections", params={"decision": decision, "limit": 500}).json()["items"]
        assert all(item["decision"] == decision for item in items)
    future = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).isoformat()
    assert api.get("/v1/inspections", params={"since": future}).json()["items"] == []
    past = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert len(api.get("/v1/inspections", params={"since": past, "limit": 500}).json()["items"]) == len(ids)
    assert api.get("/v1/inspections", params={"since": "yesterday"}).status_code == 422
    assert api.get("/v1/inspections", params={"decision": "maybe"}).status_code == 422
    assert api.get("/v1/inspections", params={"model": "nope"}).json()["items"] == []


def test_reviews_feed_the_report(api, server, run, images, tmp_path):
    good = api.post(f"/v1/models/{run.name}/inspect", content=images["good"].read_bytes(), headers={"Content-Type": "image/png"}).json()
    defect = api.post(f"/v1/models/{run.name}/inspect", content=images["defect"].read_bytes(), headers={"Content-Type": "image/png"}).json()
    reviewed = api.post(f"/v1/inspections/{good['id']}/review", json={"label": "good"}).json()
    assert reviewed["review"] == "good" and reviewed["reviewed_at"]
    api.post(f"/v1/inspections/{defect['id']}/review", json={"label": "defect"})
    assert api.post(f"/v1/inspections/{good['id']}/review", json={"label": "maybe"}).status_code == 422
    assert api.post("/v1/inspections/999999/review", json={"label": "good"}).status_code == 404
    items = api.get("/v1/inspections", params={"review": "good"}).json()["items"]
    assert [item["id"] for item in items] == [good["id"]]

    rows = rows_in(sqlite_url(server))
    from typer.testing import CliRunner

    from glass_ad.cli import app

    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", str(server.data_dir / "inspections.db"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    anomalous = sum(r["decision"] == "anomalous" for r in rows)
    assert f"{len(rows)} inspections, {anomalous} anomalous" in text
    assert "2 reviewed" in text and "data:image/png;base64," in text
    assert f"model {run.name}, per hour" in text
    live = api.get("/report")
    assert live.status_code == 200 and "inspections" in live.text
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "none.db"), "--out", str(out)])
    assert missing.exit_code == 2 and "no inspection log" in missing.output


def test_metrics_count_requests_decisions_and_batches(api, server, run, images):
    import re

    api.post(f"/v1/models/{run.name}/inspect", content=images["good"].read_bytes(), headers={"Content-Type": "image/png"})
    text = api.get("/metrics").text
    counted = [
        (re.search(r'decision="(\w+)"', line).group(1), line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("glass_inspections_total{") and f'model="{run.name}"' in line
    ]
    assert counted
    assert {decision for decision, _ in counted} <= {"normal", "anomalous"}
    assert sum(float(value) for _, value in counted) == len(rows_in(sqlite_url(server)))  # one per logged row
    assert 'route="/v1/models/{name}/inspect"' in text and 'status="200"' in text
    assert 'glass_rejected_images_total{model="' in text
    assert "glass_batch_size_count" in text and "glass_ready 1.0" in text
    assert 'glass_http_request_duration_seconds_bucket' in text


def _requests_counted(text: str, route: str, status: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("glass_http_requests_total{") and f'route="{route}"' in line and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_refusals_under_their_route(api, server, run):
    """401 (token check) and 413 (Content-Length) are answered before routing: counted under the route."""
    route = "/v1/models/{name}/inspect"
    before = api.get("/metrics").text
    with server.client(token=None) as anonymous:
        assert anonymous.post(f"/v1/models/{run.name}/inspect", content=b"x", headers={"Content-Type": "image/png"}).status_code == 401
    too_big = b"x" * int(MAX_UPLOAD_MB * 1024 * 1024 + 10)
    assert api.post(f"/v1/models/{run.name}/inspect", content=too_big, headers={"Content-Type": "image/png"}).status_code == 413
    after = api.get("/metrics").text
    assert _requests_counted(after, route, "401") == _requests_counted(before, route, "401") + 1
    assert _requests_counted(after, route, "413") == _requests_counted(before, route, "413") + 1
    assert _requests_counted(after, "unmatched", "401") == _requests_counted(before, "unmatched", "401")
    assert _requests_counted(after, "unmatched", "413") == _requests_counted(before, "unmatched", "413")
    with server.client(token=None) as anonymous:
        assert anonymous.get("/no/such/path").status_code == 401
    assert _requests_counted(api.get("/metrics").text, "unmatched", "401") >= 1  # unknown paths stay unmatched


# ---------------------------------------------------------------------------------------------------
# Load and failure


def test_bounded_load_loses_no_log_rows(server, run, images):
    bodies = [path.read_bytes() for path in images.values()]
    result = run_load(server.url, run.name, bodies, requests=LOAD_REQUESTS, concurrency=8, token=TOKEN, tag="loadtest")
    print(f"\nload: {result.summary()}")
    assert not result.errors, result.errors[:3]
    assert result.ok == LOAD_REQUESTS
    rows = [r for r in rows_in(sqlite_url(server)) if (r["filename"] or "").startswith("loadtest-")]
    assert len(rows) == LOAD_REQUESTS  # zero lost rows
    assert sorted(r["id"] for r in rows) == sorted(result.ids)
    assert {r["filename"] for r in rows} == {f"loadtest-{i}.png" for i in range(LOAD_REQUESTS)}
    assert result.batch_mean is not None and result.batch_mean > 1.0  # concurrent requests shared passes


def test_killed_service_logged_every_answer(run, images, tmp_path):
    """SIGKILL mid-load: every answered request has its row; a restart on the same file keeps them."""
    data_dir = tmp_path / "killed"
    answered: list[int] = []
    failures: list[str] = []
    stop = threading.Event()
    body = images["defect"].read_bytes()

    with serve(run, data_dir) as server:
        def client() -> None:
            with server.client() as http:
                while not stop.is_set():
                    try:
                        response = http.post(f"/v1/models/{run.name}/inspect", content=body, headers={"Content-Type": "image/png"})
                    except httpx.HTTPError as error:
                        failures.append(type(error).__name__)
                        return
                    if response.status_code == 200:
                        answered.append(response.json()["id"])

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(answered) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert len(answered) >= 30 and failures  # clients saw the kill as connection errors, not answers
    logged = {r["id"] for r in rows_in(f"sqlite:///{data_dir / 'inspections.db'}")}
    assert set(answered) <= logged
    with serve(run, data_dir) as again, again.client() as http:
        page = http.get("/v1/inspections", params={"limit": 500, "total": "true"}).json()
        assert page["total"] == len(logged)
        new = http.post(f"/v1/models/{run.name}/inspect", content=body, headers={"Content-Type": "image/png"}).json()
        assert new["id"] > max(logged)


def test_stale_upload_files_are_removed_at_start(run, tmp_path):
    """A SIGKILL leaves DATA/incoming/upload-*.bin behind: the next start removes them, nothing else."""
    data_dir = tmp_path / "stale"
    incoming = data_dir / "incoming"
    incoming.mkdir(parents=True)
    stale = [incoming / "upload-abc123.bin", incoming / "upload-x.bin"]
    for path in stale:
        path.write_bytes(b"\x89PNG half an upload")
    other = incoming / "notes.txt"
    other.write_text("not ours")
    with serve(run, data_dir):
        assert not any(path.exists() for path in stale)
        assert other.read_text() == "not ours"


# ---------------------------------------------------------------------------------------------------
# PostgreSQL (a throwaway cluster when the server binaries are installed)


def _pg_binaries() -> tuple[Path, Path] | None:
    candidates = [Path(p).parent for p in (shutil.which("initdb"),) if p]
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder / "initdb", folder / "pg_ctl"
    return None


class PostgresCluster:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl), as the postgres user when run as root."""

    def __init__(self) -> None:
        binaries = _pg_binaries()
        if binaries is None:
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed (Debian package postgresql)")
        self.initdb, self.pg_ctl = binaries
        self.prefix: list[str] = []
        self.folder = Path(tempfile.mkdtemp(prefix="glass-pg-"))
        if os.geteuid() == 0:  # initdb refuses to run as root: run the cluster as the postgres system user
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.folder)
                pytest.skip("running as root and there is no 'postgres' user to run a PostgreSQL cluster as")
            if not shutil.which("runuser"):
                shutil.rmtree(self.folder)
                pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        self.cluster = self.folder / "cluster"
        self.url = f"postgresql://glass@127.0.0.1:{self.port}/postgres"
        try:
            subprocess.run([*self.prefix, str(self.initdb), "-D", str(self.cluster), "-U", "glass", "--auth=trust", "-E", "UTF8", "--no-sync"],
                           check=True, capture_output=True, timeout=120)  # fmt: skip
            self.start()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            log = (self.folder / "server.log").read_text(errors="replace") if (self.folder / "server.log").exists() else ""
            shutil.rmtree(self.folder, ignore_errors=True)
            pytest.skip(f"could not start a throwaway PostgreSQL cluster: {error} {getattr(error, 'stderr', b'')!r} {log}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run([*self.prefix, str(self.pg_ctl), "-D", str(self.cluster), "-o", options, "-l", str(self.folder / "server.log"), "-w", "-t", "60", "start"],
                       check=True, capture_output=True, timeout=120)  # fmt: skip

    def stop(self) -> None:
        subprocess.run([*self.prefix, str(self.pg_ctl), "-D", str(self.cluster), "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    cluster = PostgresCluster()
    try:
        yield cluster.url
    finally:
        cluster.remove()


def test_postgres_log(postgres_url, run, images, tmp_path):
    direct = postgres_url.replace("postgresql://", "postgresql+psycopg://")
    with serve(run, tmp_path / "pg-service", "--db", postgres_url) as server, server.client() as http:
        assert http.get("/v1/models").json()["log"]["backend"] == "postgresql"
        answers = [
            http.post(f"/v1/models/{run.name}/inspect", params={"overlay": "true"},
                      files={"file": (f"{kind}.png", path.read_bytes(), "image/png")}).json()  # fmt: skip
            for kind, path in images.items()
        ]
        result = run_load(server.url, run.name, [images["good"].read_bytes()], requests=40, concurrency=8, token=TOKEN, tag="pgload")
        assert not result.errors and result.ok == 40
        page = http.get("/v1/inspections", params={"limit": 2}).json()
        assert len(page["items"]) == 2 and page["next_before_id"] is not None
        anomalous = http.get("/v1/inspections", params={"decision": "anomalous", "limit": 500}).json()["items"]
        assert all(item["decision"] == "anomalous" for item in anomalous)
        assert http.get(answers[0]["overlay_url"]).status_code == 200
        http.post(f"/v1/inspections/{answers[0]['id']}/review", json={"label": "good"})
    rows = rows_in(direct)
    assert len(rows) == 43
    assert {r["filename"] for r in rows if r["filename"].startswith("pgload-")} == {f"pgload-{i}.png" for i in range(40)}
    assert rows[0]["created_at"] is not None and rows[0]["review"] == "good"
    log = InspectionLog.open(direct)  # migrating an up-to-date database is a no-op
    assert log.schema_version() == SCHEMA_VERSION and log.count() == 43
    log.close()
    out = write_report(postgres_url, tmp_path / "pg-report.html")
    assert "43 inspections" in out.read_text()


def test_database_down_answers_503_and_readyz_says_so(run, images, tmp_path):
    """PostgreSQL stops under a running service: every log route answers 503 JSON with the reason (not a
    500 that drops the connection), /readyz turns 503, and all recovers when the database is back."""
    cluster = PostgresCluster()
    try:
        with serve(run, tmp_path / "pg-down", "--db", cluster.url) as server, server.client() as http:
            first = http.post(f"/v1/models/{run.name}/inspect", params={"overlay": "true"},
                              files={"file": ("part.png", images["good"].read_bytes(), "image/png")}).json()  # fmt: skip
            assert http.get("/readyz").status_code == 200
            cluster.stop()
            calls = [
                ("GET", "/v1/inspections", {}),
                ("GET", f"/v1/inspections/{first['id']}", {}),
                ("POST", f"/v1/inspections/{first['id']}/review", {"json": {"label": "good"}}),
                ("GET", first["overlay_url"], {}),
                ("GET", first["mask_url"], {}),
                ("GET", "/report", {}),
                ("POST", f"/v1/models/{run.name}/inspect", {"content": images["good"].read_bytes(), "headers": {"Content-Type": "image/png"}}),
                ("GET", "/readyz", {}),
            ]
            for method, path, kwargs in calls:
                response = http.request(method, path, **kwargs)
                assert response.status_code == 503, (path, response.status_code, response.text)
                assert response.headers["content-type"] == "application/json", path
                body = response.json()
                reason = body.get("detail") or body.get("log")
                assert "inspection log is unavailable (OperationalError)" in reason, (path, body)
                assert response.headers.get("retry-after"), path
                assert "connection" not in response.headers or response.headers["connection"] != "close", path
            assert http.get("/readyz").json()["status"] == "log unavailable"
            assert "glass_ready 0.0" in http.get("/metrics").text
            cluster.start()
            deadline = time.monotonic() + 30
            while http.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert http.get("/readyz").json()["log"] == "ok"
            assert http.get(f"/v1/inspections/{first['id']}").json()["id"] == first["id"]
            assert http.post(f"/v1/models/{run.name}/inspect", content=images["good"].read_bytes(),
                             headers={"Content-Type": "image/png"}).status_code == 200  # fmt: skip
            assert "glass_ready 1.0" in http.get("/metrics").text
    finally:
        cluster.remove()


# ---------------------------------------------------------------------------------------------------
# The page in headless Chromium


def _chromium() -> tuple[str, str] | None:
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
    return (browser, driver) if browser and driver else None


@pytest.fixture
def browser(tmp_path, monkeypatch):
    webdriver = pytest.importorskip("selenium.webdriver")
    found = _chromium()
    if found is None:
        pytest.skip("headless Chromium not installed (Debian packages chromium and chromium-driver)")
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,1000"):  # fmt: skip
        options.add_argument(flag)
    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium look for drivers online
    driver = webdriver.Chrome(options=options, service=DriverService(executable_path=found[1]))
    try:
        yield driver
    finally:
        driver.quit()


def test_page_inspects_an_uploaded_image(browser, server, api, run, images, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    expected = api.post(f"/v1/models/{run.name}/inspect", content=images["defect"].read_bytes(),
                        headers={"Content-Type": "image/png"}).json()  # fmt: skip
    wait = WebDriverWait(browser, 30)
    browser.get(f"{server.url}/?token={TOKEN}")
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("ready"))
    assert Select(browser.find_element(By.ID, "model")).first_selected_option.get_attribute("value") == run.name
    operating = browser.find_element(By.ID, "operating")  # the model's promise, shown before any inspection
    assert operating.is_displayed() and operating.text == Detector.load(run).operating_line()
    browser.find_element(By.ID, "file").send_keys(str(images["defect"]))
    wait.until(ec.text_to_be_present_in_element((By.ID, "progress"), "1 image(s) inspected"))
    verdict = browser.find_element(By.ID, "verdict")
    assert verdict.text == expected["decision"] and expected["decision"] in verdict.get_attribute("class")
    assert browser.find_element(By.ID, "score").text == f"{expected['score']:.4f}"
    overlay = browser.find_element(By.ID, "overlay")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay) > 0)
    assert browser.execute_script("return arguments[0].naturalWidth", overlay) == 3 * 64
    assert "/overlay.png" in overlay.get_attribute("src")
    assert browser.execute_script("return document.getElementById('colorbar').naturalHeight") == 256
    scale = expected["color_scale"]
    assert browser.find_element(By.ID, "cb-threshold").text.startswith(f"{scale['pixel_threshold']:.3f}")
    assert browser.find_element(By.ID, "cb-max").text.startswith(f"{scale['max']:.3f}")
    first = browser.find_element(By.CSS_SELECTOR, "#inspections tbody tr")
    assert int(first.get_attribute("data-id")) == int(overlay.get_attribute("data-inspection"))
    assert images["defect"].name in first.text
    # Filters reach the log: only normal rows after choosing "normal".
    Select(browser.find_element(By.ID, "f-decision")).select_by_value("normal")
    browser.find_element(By.ID, "refresh").click()
    want = [str(item["id"]) for item in api.get("/v1/inspections", params={"decision": "normal", "limit": 25}).json()["items"]]
    shown = "return Array.from(document.querySelectorAll('#inspections tbody tr')).map(r => r.dataset.id)"
    wait.until(lambda d: d.execute_script(shown) == want)
    browser.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "serve-page.png"
    browser.save_screenshot(str(shot))
    served = api.get(f"/v1/inspections/{overlay.get_attribute('data-inspection')}/overlay.png")
    assert served.status_code == 200
    _check_screenshot(browser, shot, verdict, overlay, served.content, expected["decision"])
    keep = os.environ.get("GLASS_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
    print(f"\nscreenshot: {shot}")


def test_page_states_before_after_and_between_inspections(browser, server, api, run, images, tmp_path):
    """Empty panel hidden before any inspection; a broken image after a good one shows its error without
    the good verdict above it and counts it as failed; nothing is cut at 420 px width."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(f"{server.url}/?token={TOKEN}")
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("ready"))
    result, error = browser.find_element(By.ID, "result"), browser.find_element(By.ID, "error")
    assert not result.is_displayed() and not error.is_displayed()  # nothing inspected yet: no empty panel
    assert browser.execute_script("return getComputedStyle(arguments[0]).display", result) == "none"

    browser.find_element(By.ID, "file").send_keys(str(images["good"]))
    wait.until(ec.text_to_be_present_in_element((By.ID, "progress"), "1 image(s) inspected"))
    assert result.is_displayed() and not error.is_displayed()

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not an image")
    browser.find_element(By.ID, "file").send_keys(str(broken))
    wait.until(ec.text_to_be_present_in_element((By.ID, "progress"), "failed"))
    assert browser.find_element(By.ID, "progress").text == "0 image(s) inspected, 1 failed"
    assert error.is_displayed() and "broken.png" in error.text and "not an image or corrupt" in error.text
    assert not result.is_displayed()  # the first image's verdict does not stand above this error

    # Two at once, one good and one broken: the good one's result and the broken one's error, both counted.
    browser.find_element(By.ID, "file").send_keys(f"{images['defect']}\n{broken}")
    wait.until(ec.text_to_be_present_in_element((By.ID, "progress"), "1 image(s) inspected, 1 failed"))
    assert result.is_displayed() and browser.find_element(By.ID, "filename").text == images["defect"].name
    assert error.is_displayed() and "broken.png" in error.text
    top = "return arguments[0].getBoundingClientRect().top"
    assert browser.execute_script(top, error) < browser.execute_script(top, result)  # the error comes first

    browser.set_window_size(420, 900)
    wait.until(lambda d: d.execute_script("return window.innerWidth") <= 420)
    width = browser.execute_script("return document.documentElement.clientWidth")
    header = browser.find_element(By.TAG_NAME, "header")
    for element in [header, *header.find_elements(By.XPATH, "./*")]:
        left, right = browser.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.left, r.right]", element)
        assert 0 <= left and right <= width + 0.5, (element.tag_name, element.text, left, right, width)
    assert browser.execute_script("return arguments[0].scrollWidth <= arguments[0].clientWidth", header)
    assert browser.execute_script("return document.documentElement.scrollWidth") <= width  # no sideways scrolling
    shot = tmp_path / "serve-page-narrow.png"
    browser.save_screenshot(str(shot))
    keep = os.environ.get("GLASS_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)


def test_report_chart_axis_spans_the_data():
    """One hour of data: the time axis covers that hour (matplotlib alone made it 2023 to 2027)."""
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    from glass_ad.serve.report import chart_figure

    t0 = dt.datetime(2025, 6, 1, 8, 12, tzinfo=dt.timezone.utc)
    for count, step, width in ((30, dt.timedelta(minutes=1), dt.timedelta(hours=2)),
                               (5, dt.timedelta(hours=1), dt.timedelta(hours=6)),
                               (3, dt.timedelta(days=1), dt.timedelta(days=4))):  # fmt: skip
        outcomes = [(t0 + i * step, "m", "anomalous" if i % 2 else "normal", None) for i in range(count)]
        bucket, periods, _, _ = aggregate(outcomes)
        figure = chart_figure(periods, bucket)
        low, high = (mdates.num2date(x) for x in figure.axes[0].get_xlim())
        assert low <= min(periods) < max(periods) + step <= high + step, bucket
        assert high - low <= width, (bucket, low, high)
        labels = [label.get_text() for label in figure.axes[0].get_xticklabels()]
        assert labels and all(text.startswith("2025-06-0") for text in labels), labels
        plt.close(figure)


# The badge colours of style.css (.verdict.normal / .verdict.anomalous).
VERDICT_BACKGROUND = {"normal": (0x2A, 0x8A, 0x3A), "anomalous": (0xC0, 0x39, 0x2B)}


def _element_box(browser, element, ratio: float) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of an element's inner box (border excluded) in screenshot pixels."""
    rect = browser.execute_script(
        "const r = arguments[0].getBoundingClientRect(), s = getComputedStyle(arguments[0]);"
        "const bl = parseFloat(s.borderLeftWidth), bt = parseFloat(s.borderTopWidth);"
        "return [r.left + bl, r.top + bt, r.right - parseFloat(s.borderRightWidth), r.bottom - parseFloat(s.borderBottomWidth)];",
        element,
    )  # fmt: skip
    return tuple(round(v * ratio) for v in rect)  # type: ignore[return-value]


def _check_screenshot(browser, shot: Path, verdict, overlay, overlay_png: bytes, decision: str) -> None:
    """The screenshot shows the page as it is: the viewport's size, the verdict badge in its decision's
    colour, and the overlay the service answered (same picture, at the displayed size)."""
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    ratio, width, height = browser.execute_script("return [window.devicePixelRatio, window.innerWidth, window.innerHeight]")
    assert pixels.shape[:2] == (round(height * ratio), round(width * ratio))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # a page, not a blank or uniform picture

    left, top, right, bottom = _element_box(browser, verdict, ratio)
    assert 0 <= left < right <= pixels.shape[1] and 0 <= top < bottom <= pixels.shape[0]
    badge = pixels[top:bottom, left:right].reshape(-1, 3)
    colours, counts = np.unique(badge, axis=0, return_counts=True)
    # White bold text on the badge colour: the most frequent colour is the background of this decision.
    assert np.abs(colours[counts.argmax()] - VERDICT_BACKGROUND[decision]).max() <= 3, colours[counts.argmax()]

    left, top, right, bottom = _element_box(browser, overlay, ratio)
    assert 0 <= left < right <= pixels.shape[1] and 0 <= top < bottom <= pixels.shape[0]
    shown = Image.fromarray(pixels[top:bottom, left:right].astype(np.uint8))
    served = Image.open(io.BytesIO(overlay_png)).convert("RGB")
    assert abs(shown.width / shown.height - served.width / served.height) < 0.02  # drawn undistorted
    # Compared at the served size: browser and PIL scale differently, so a small mean difference only.
    on_screen = np.asarray(shown.resize(served.size, Image.BILINEAR)).astype(np.int16)
    reference = np.asarray(served).astype(np.int16)
    assert reference.std() > 10  # the heatmap overlay itself is not flat
    assert np.abs(on_screen - reference).mean() < 8  # measured about 2


# ---------------------------------------------------------------------------------------------------
# Parts, in process


def test_micro_batcher_groups_concurrent_items_and_reports_errors():
    seen: list[int] = []
    gate = threading.Event()

    def process(items: list[int]) -> list[int]:
        gate.wait(5)
        seen.append(len(items))
        if -1 in items:
            raise RuntimeError("bad item")
        return [2 * i for i in items]

    batcher = MicroBatcher(process, max_batch=4, max_wait_s=0.05)
    futures = [batcher.submit(i) for i in range(10)]
    gate.set()
    assert [f.result(5) for f in futures] == [2 * i for i in range(10)]
    assert max(seen) == 4 and sum(seen) == 10 and len(seen) < 10
    failing = [batcher.submit(-1), batcher.submit(3)]
    for future in failing:
        with pytest.raises(RuntimeError, match="bad item"):
            future.result(5)
    batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.submit(1)
    with pytest.raises(ValueError):
        MicroBatcher(process, max_batch=0)


def test_service_answers_503_until_a_model_is_loaded(run, tmp_path):
    from fastapi import HTTPException

    from glass_ad.serve.service import Service
    from glass_ad.serve.settings import ServeSettings

    service = Service(ServeSettings(runs=[f"line1={run}"], data_dir=tmp_path))
    with pytest.raises(HTTPException) as loading:
        service.model("line1")
    assert loading.value.status_code == 503 and loading.value.headers["Retry-After"]
    assert service.status()["status"] == "loading"
    service.errors["line1"] = "RuntimeError: broken"
    with pytest.raises(HTTPException) as failed:
        service.model("line1")
    assert failed.value.status_code == 503 and "broken" in failed.value.detail
    with pytest.raises(HTTPException) as unknown:
        service.model("other")
    assert unknown.value.status_code == 404
    with pytest.raises(ValueError, match="named"):
        ServeSettings(runs=[str(run), str(run)], data_dir=tmp_path)
    with pytest.raises(FileNotFoundError):
        ServeSettings(runs=[str(tmp_path / "nothing")], data_dir=tmp_path)
    with pytest.raises(ValueError, match="model name"):
        ServeSettings(runs=[f"bad/name={run}"], data_dir=tmp_path)


def test_log_schema_is_versioned(tmp_path):
    url = f"sqlite:///{tmp_path / 'log.db'}"
    log = InspectionLog.open(url)
    assert log.schema_version() == SCHEMA_VERSION and log.count() == 0
    now = dt.datetime.now(dt.timezone.utc)
    row = dict(created_at=now, model_name="m", model_version="v", engine="torch", filename=None, image_sha256="0" * 64,
               image_bytes=1, width=8, height=8, score=0.5, normalized_score=0.5, decision="normal", threshold=0.6,
               threshold_kind="far", region_fraction=0.0, overlay_path=None, mask_path=None, latency_ms=1.0)  # fmt: skip
    ids = log.write_many([row, {**row, "decision": "anomalous"}])
    assert ids == [1, 2]
    stored = log.get(1)
    assert stored["created_at"] == now.replace(microsecond=stored["created_at"].microsecond) and stored["created_at"].tzinfo
    with pytest.raises(ValueError):
        log.query(decision="maybe")
    with log.engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE glass_schema SET value = '99' WHERE key = 'version'"))
    log.close()
    with pytest.raises(DatabaseError, match="newer"):
        InspectionLog.open(url)


def test_report_rates():
    t0 = dt.datetime(2025, 1, 1, 8, tzinfo=dt.timezone.utc)
    outcomes = [
        (t0, "m", "anomalous", "good"),  # false alarm
        (t0, "m", "normal", "good"),
        (t0, "m", "anomalous", "defect"),
        (t0 + dt.timedelta(hours=1), "m", "normal", "defect"),  # missed
        (t0 + dt.timedelta(hours=1), "m", "normal", None),
    ]
    bucket, periods, per_model, total = aggregate(outcomes)
    assert bucket == "hour" and len(periods) == 2
    first = periods[t0]
    assert first.flag_rate == pytest.approx(2 / 3) and first.false_alarm_rate == pytest.approx(0.5)
    assert first.defect_rate == pytest.approx(1 / 3)
    assert total.missed == 1 and total.reviewed == 4 and per_model["m"][t0].inspected == 3
    assert aggregate(outcomes, "day")[0] == "day" and len(aggregate(outcomes, "day")[1]) == 1
    with pytest.raises(ValueError, match="bucket"):
        aggregate([], "month")


def test_serve_command_refuses_a_database_it_cannot_use(run, tmp_path):
    from typer.testing import CliRunner

    from glass_ad.cli import app

    newer = tmp_path / "newer.db"
    log = InspectionLog.open(f"sqlite:///{newer}")
    with log.engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE glass_schema SET value = '99' WHERE key = 'version'"))
    log.close()
    port = str(free_port())
    for db, message in (
        (str(newer), "newer than this glass-ad"),
        (f"postgresql://nobody@127.0.0.1:{free_port()}/nothing", "cannot"),
        ("nosuchdialect://x", "cannot use database nosuchdialect://x"),
    ):
        result = CliRunner().invoke(app, ["serve", str(run), "--db", db, "--port", port, "--data-dir", str(tmp_path / "d")])
        assert result.exit_code == 2, result.output
        assert message in result.output
    missing = CliRunner().invoke(app, ["serve", str(tmp_path / "no-run"), "--port", port])
    assert missing.exit_code == 2 and "no checkpoint" in missing.output


def test_page_loads_nothing_from_outside(api):
    import re

    static = Path(__import__("glass_ad.serve.routes", fromlist=["STATIC_DIR"]).STATIC_DIR)
    for path in static.iterdir():
        text = path.read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), path.name  # no CDN, no fonts
    page = api.get("/").text
    assert 'src="/static/app.js"' in page and 'href="/static/style.css"' in page
    assert api.get("/docs").status_code == 404  # FastAPI's docs page would pull scripts from a CDN


def test_onnx_engine_serves_the_same_scores(run, images, tmp_path):
    """--engine onnx: the exported graph behind the same batcher gives the torch engine's numbers."""
    pytest.importorskip("onnxruntime")
    from glass_ad.inference.export import export_onnx
    from glass_ad.serve.models import load_served_model, parse_model_spec

    export_onnx(run, tmp_path / "model.onnx")
    shutil.copy(tmp_path / "model.onnx", run / "model.onnx")
    try:
        spec = parse_model_spec(f"line={run}")
        served = {engine: load_served_model(spec, engine=engine, threads=1) for engine in ("torch", "onnx")}
        try:
            for path in images.values():
                prepared = served["torch"].detector.prepare(np.array(Image.open(path).convert("RGB")))
                torch_score = served["torch"].batcher.submit(prepared).result(30)
                onnx_score = served["onnx"].batcher.submit(prepared).result(30)
                assert onnx_score[0] == pytest.approx(torch_score[0], abs=1e-4)
                assert np.abs(onnx_score[2] - torch_score[2]).max() < 1e-3
            assert served["onnx"].info["engine"] == "onnx" and served["onnx"].version == served["torch"].version
        finally:
            for model in served.values():
                model.close()
    finally:
        (run / "model.onnx").unlink()


def test_openvino_engine_is_served(run, images, tmp_path):
    """`glass serve --engine openvino` (offered by --help) serves RUN_DIR/model.xml with the torch numbers."""
    pytest.importorskip("openvino")
    from typer.testing import CliRunner

    from glass_ad.cli import app
    from glass_ad.inference.openvino_export import export_openvino

    assert "openvino" in CliRunner().invoke(app, ["serve", "--help"]).output
    ir_run = tmp_path / "ir"
    ir_run.mkdir()
    shutil.copy(run / "model.pt", ir_run / "model.pt")
    export_openvino(ir_run)
    assert (ir_run / "model.xml").is_file()
    detector = Detector.load(run)
    with serve(ir_run, tmp_path / "ir-service", "--engine", "openvino") as server, server.client() as http:
        model = http.get("/v1/models").json()["models"][0]
        assert model["engine"] == "openvino" and model["precision"] == "fp32"
        for path in images.values():
            result = http.post("/v1/models/ir/inspect", content=path.read_bytes(), headers={"Content-Type": "image/png"}).json()
            expected = detector(str(path))
            assert result["engine"] == "openvino" and result["precision"] == "fp32"  # an int8 IR would say int8
            assert result["score"] == pytest.approx(expected.score, abs=1e-3)
            assert result["decision"] == expected.decision


def test_a_rectangular_model_is_served_by_both_engines(tmp_path):
    """A 64×128 network input: warm-up, prepared inputs and maps are H×W; ONNX gives the torch numbers."""
    pytest.importorskip("onnxruntime")
    from glass_ad.inference.export import export_onnx
    from glass_ad.model.checkpoint import Checkpoint
    from glass_ad.model.glass_model import build_model
    from glass_ad.serve.models import load_served_model, parse_model_spec

    config = make_config("fast", image_size=64, image_shape=(64, 128), fit="stretch", backbone="efficientnet_lite0", num_threads=1)
    torch.manual_seed(0)
    run = tmp_path / "wide"
    Checkpoint.from_model(build_model(config), config).save(run)  # untrained: serving needs the shape only
    export_onnx(run, verify=False)
    served = {engine: load_served_model(parse_model_spec(f"wide={run}"), engine=engine, threads=1) for engine in ("torch", "onnx")}
    try:
        assert served["torch"].info["input_shape"] == [64, 128] and served["torch"].info["image_size"] == 64
        frame = np.random.default_rng(0).integers(0, 256, (90, 260, 3), dtype=np.uint8)
        prepared = served["torch"].detector.prepare(frame)
        assert prepared.shape == (64, 128, 3)
        torch_score = served["torch"].batcher.submit(prepared).result(30)
        onnx_score = served["onnx"].batcher.submit(prepared).result(30)
        assert torch_score[2].shape == onnx_score[2].shape == (64, 128)
        assert onnx_score[0] == pytest.approx(torch_score[0], abs=1e-4)
        assert np.abs(onnx_score[2] - torch_score[2]).max() < 1e-3
        assert served["torch"].detector.preprocessor.map_to_original(torch_score[2], frame.shape[:2]).shape == (90, 260)
    finally:
        for model in served.values():
            model.close()


def test_a_model_that_fails_to_load_keeps_the_service_unready(run, tmp_path):
    from fastapi import HTTPException

    from glass_ad.serve.service import Service
    from glass_ad.serve.settings import ServeSettings

    service = Service(ServeSettings(runs=[f"line={run}"], data_dir=tmp_path, engine="onnx"))  # no model.onnx
    service.start()
    try:
        service._loader.join(timeout=60)
        status = service.status()
        assert status["status"] == "failed" and "glass export" in status["errors"]["line"]
        assert not service.ready
        with pytest.raises(HTTPException) as error:
            service.model("line")
        assert error.value.status_code == 503 and "failed to load" in error.value.detail
    finally:
        service.stop()
