"""The HTTP contract, in-process (FastAPI TestClient): auth, validation before 202, job lifecycle."""

import re
import time

import pytest


from backend_test_data import api_client, COGEO, RGB_BYTE, vrt_over_copy

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def client(registry):
    with api_client(registry, TOKEN) as c:
        yield c


def job_body(tmp_path, **overrides):
    body = {"task": "semantic_segmentation", "model": "pointwise", "inputs": [str(COGEO)],
            "outputs": {"raster": str(tmp_path / "result.tif")}, "options": {"batch_size": 2}}
    body.update(overrides)
    return body


def wait_for(client, job_id, statuses=("succeeded", "failed", "cancelled"), timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/jobs/{job_id}", headers=AUTH).json()
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s")


def test_health_needs_no_token(client):
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["version"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                                     {"Authorization": f"Basic {TOKEN}"}])
@pytest.mark.parametrize("method,path", [("get", "/models"), ("get", "/jobs"), ("post", "/jobs"),
                                         ("get", "/jobs/x"), ("post", "/jobs/x/cancel")])
def test_every_endpoint_but_health_requires_the_token(client, headers, method, path):
    r = getattr(client, method)(path, headers=headers)
    assert r.status_code == 401
    assert "token" in r.json()["detail"]


def test_models_lists_model_info(client):
    r = client.get("/models", headers=AUTH)
    assert r.status_code == 200
    models = {m["id"]: m for m in r.json()["models"]}
    assert set(models) == {"pointwise", "spatial", "nir4", "slow"}
    assert set(models["pointwise"]) == {"id", "name", "task", "dataset", "encoder", "metric", "description",
                                        "classes", "tile_size", "tile_overlap", "gsd_m", "bands", "band_roles",
                                        "indices", "path"}
    assert (models["pointwise"]["band_roles"], models["pointwise"]["indices"]) == ([], [])  # bands by number
    # The synthetic test packages say nothing of their data or figures: empty strings, not made-up values.
    assert (models["pointwise"]["dataset"], models["pointwise"]["metric"]) == ("", "")


def test_malformed_json_without_token_is_401_not_422(client):
    r = client.post("/jobs", headers={"Content-Type": "application/json"}, content=b"{not json")
    assert r.status_code == 401


def test_malformed_json_is_422(client):
    r = client.post("/jobs", headers={**AUTH, "Content-Type": "application/json"}, content=b"{not json")
    assert r.status_code == 422
    r = client.post("/jobs", headers=AUTH, json={"model": "pointwise"})  # inputs/outputs missing
    assert r.status_code == 422


@pytest.mark.parametrize("overrides,status,fragment", [
    ({"model": "nope"}, 404, "Unknown model 'nope'"),
    ({"inputs": ["/does/not/exist.tif"]}, 400, "does not exist"),
    ({"model": "nir4", "inputs": [str(RGB_BYTE)]}, 400, "has 3 band(s)"),
    ({"extent": {"xmin": 0, "ymin": 0, "xmax": 1, "ymax": 1, "crs": "EPSG:4326"}}, 400, "does not intersect"),
    ({"outputs": {"raster": "/no/such/folder/r.tif"}}, 400, "Output folder"),
    ({"outputs": {"raster": str(COGEO)}}, 400, "is the input raster"),
])
def test_invalid_requests_are_refused_before_queueing(client, tmp_path, overrides, status, fragment):
    before = len(client.get("/jobs", headers=AUTH).json()["jobs"])
    r = client.post("/jobs", headers=AUTH, json=job_body(tmp_path, **overrides))
    assert r.status_code == status
    assert fragment in r.json()["detail"]
    assert len(client.get("/jobs", headers=AUTH).json()["jobs"]) == before


def test_job_runs_to_success(client, tmp_path):
    r = client.post("/jobs", headers=AUTH, json=job_body(tmp_path))
    assert r.status_code == 202
    job = r.json()
    assert job["status"] in ("queued", "running") and job["outputs"] is None
    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["progress"] == 100.0 and done["finished"] >= done["started"] >= done["created"]
    assert done["outputs"] == {"raster": str(tmp_path / "result.tif")}
    # Where it ran and how fast (the dock's status line shows both).
    assert done["provider"] == "CPUExecutionProvider" and re.fullmatch(r"CPU \(\d+ cores\)", done["device"])
    assert done["megapixels_per_s"] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["result.tif"]
    assert job["id"] in [j["id"] for j in client.get("/jobs", headers=AUTH).json()["jobs"]]


def test_unknown_job_is_404(client):
    assert client.get("/jobs/does-not-exist", headers=AUTH).status_code == 404
    assert client.post("/jobs/does-not-exist/cancel", headers=AUTH).status_code == 404


def test_openapi_schema_is_served(client):
    schema = client.get("/openapi.json").json()
    assert {"/health", "/models", "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel"} <= set(schema["paths"])
    assert "JobRequest" in schema["components"]["schemas"]


def test_queued_job_cancels_at_once_and_running_job_stops(client, tmp_path):
    slow = job_body(tmp_path, model="slow", outputs={"raster": str(tmp_path / "slow.tif")}, options={"batch_size": 1})
    first = client.post("/jobs", headers=AUTH, json=slow).json()
    second = client.post("/jobs", headers=AUTH, json=job_body(tmp_path)).json()
    queued = client.post(f"/jobs/{second['id']}/cancel", headers=AUTH).json()
    assert queued["status"] == "cancelled" and queued["started"] is None  # never ran
    wait_for(client, first["id"], statuses=("running",))
    client.post(f"/jobs/{first['id']}/cancel", headers=AUTH)
    assert wait_for(client, first["id"])["status"] == "cancelled"
    assert list(tmp_path.iterdir()) == []


def test_job_that_fails_mid_way_reports_why_and_leaves_nothing(client, tmp_path):
    vrt, source = vrt_over_copy(COGEO, tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    body = job_body(tmp_path, inputs=[str(vrt)], outputs={"raster": str(out_dir / "r.tif")})
    source.unlink()  # the VRT still opens; reading its pixels fails once the job runs
    r = client.post("/jobs", headers=AUTH, json=body)
    assert r.status_code == 202
    job = wait_for(client, r.json()["id"])
    assert job["status"] == "failed" and job["outputs"] is None
    assert "mosaic.vrt" in job["error"] and "failed" in job["error"]
    assert list(out_dir.iterdir()) == []


def test_a_long_poll_answers_when_the_status_changes_and_else_after_its_wait(client, tmp_path):
    # The plugin asks "tell me when it is no longer running, or in S seconds": the end of a job reaches it at
    # once, with no polling delay, and its progress at the pace it chose.
    slow = job_body(tmp_path, model="slow", outputs={"raster": str(tmp_path / "slow.tif")}, options={"batch_size": 1})
    job = client.post("/jobs", headers=AUTH, json=slow).json()
    running = wait_for(client, job["id"], statuses=("running",))
    start = time.monotonic()
    same = client.get(f"/jobs/{job['id']}?wait=0.5&status=running", headers=AUTH).json()
    assert same["status"] == "running" and time.monotonic() - start >= 0.45  # waited: nothing changed
    assert same["progress"] >= running["progress"]
    client.post(f"/jobs/{job['id']}/cancel", headers=AUTH)
    start = time.monotonic()
    ended = client.get(f"/jobs/{job['id']}?wait=10&status=running", headers=AUTH).json()
    assert ended["status"] == "cancelled" and time.monotonic() - start < 9  # answered at the change
    start = time.monotonic()
    again = client.get(f"/jobs/{job['id']}?wait=10&status=running", headers=AUTH).json()
    assert again["status"] == "cancelled" and time.monotonic() - start < 9  # already different: at once
    assert client.get(f"/jobs/{job['id']}?wait=11&status=running", headers=AUTH).status_code == 422
    assert client.get("/jobs/nothing?wait=1&status=running", headers=AUTH).status_code == 404
