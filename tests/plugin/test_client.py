"""The HTTP client against a real backend process."""
import os
import time

import pytest

from plugin_test_support import COGEO, TOKEN


@pytest.fixture()
def client(backend, qgis_app):
    from mtp_qgis.client import MtpClient

    return MtpClient(backend["url"], TOKEN, "the test fixture")


def test_health_and_models(client):
    assert client.health()["status"] == "ok"
    ids = {m["id"] for m in client.models()}
    assert {"mtp_seg_default", "slow_seg"} <= ids
    info = client.model("mtp_seg_default")
    assert info["task"] == "semantic_segmentation"
    assert [c["name"] for c in info["classes"]] == ["reddish", "greenish", "bluish", "dark"]
    assert info["gsd_m"] == pytest.approx(0.6)


def test_submit_poll_and_list(client, out_dir):
    out = out_dir / "client.tif"
    job = client.submit({"task": "semantic_segmentation", "model": "mtp_seg_default", "inputs": [str(COGEO)],
                         "outputs": {"raster": str(out)}, "options": {}})
    assert job["status"] in ("queued", "running", "succeeded")
    deadline = time.monotonic() + 120
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = client.job(job["id"])
    assert job["status"] == "succeeded", job
    assert job["outputs"]["raster"] == str(out)
    assert out.exists()
    assert job["id"] in {j["id"] for j in client.jobs()}


def test_unknown_model_is_a_404_with_detail(client, out_dir):
    from mtp_qgis.client import BackendRequestError

    with pytest.raises(BackendRequestError) as info:
        client.submit({"task": "semantic_segmentation", "model": "no_such_model", "inputs": [str(COGEO)],
                       "outputs": {"raster": str(out_dir / "x.tif")}, "options": {}})
    assert info.value.status_code == 404
    assert "no_such_model" in str(info.value)
    with pytest.raises(BackendRequestError, match="mtp_seg_default"):
        client.model("no_such_model")  # the message lists what the backend has


def test_wrong_token_says_where_the_token_comes_from(backend, qgis_app):
    from mtp_qgis.client import BackendAuthError, MtpClient

    bad = MtpClient(backend["url"], "wrong", "the file /somewhere/token")
    assert bad.health()["status"] == "ok"  # /health needs no token
    with pytest.raises(BackendAuthError, match="/somewhere/token"):
        bad.models()


def test_unreachable_backend(qgis_app):
    from mtp_qgis.client import BackendUnreachable, MtpClient

    with pytest.raises(BackendUnreachable, match="not reachable"):
        MtpClient("http://127.0.0.1:9", TOKEN, timeout=2).health()


def test_backend_url_from_settings_and_environment_override(qgis_app, monkeypatch):
    from qgis.core import QgsSettings

    from mtp_qgis import settings

    QgsSettings().setValue("mtp_qgis/backend_url", "http://127.0.0.1:1234/")
    try:
        assert QgsSettings().fileName().startswith(str(settings.Path(os.environ["HOME"]).parent))
        assert settings.backend_url() == "http://127.0.0.1:1234"
        monkeypatch.setenv("MTP_QGIS_BACKEND_URL", "http://127.0.0.1:5678")
        assert settings.backend_url() == "http://127.0.0.1:5678"
    finally:
        QgsSettings().remove("mtp_qgis/backend_url")


def test_token_from_environment_else_file(qgis_app, monkeypatch, tmp_path):
    from mtp_qgis import settings

    assert settings.read_token() == (TOKEN, "the environment variable MTP_QGIS_TOKEN")
    monkeypatch.delenv("MTP_QGIS_TOKEN")
    monkeypatch.setenv("HOME", str(tmp_path))
    token, where = settings.read_token()
    assert token is None and str(tmp_path / ".config/mtp_qgis/token") in where
    (tmp_path / ".config/mtp_qgis").mkdir(parents=True)
    (tmp_path / ".config/mtp_qgis/token").write_text("from-file\n")
    assert settings.read_token()[0] == "from-file"
