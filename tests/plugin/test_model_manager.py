"""The model manager (the dock's Models tab): an index and model files served from 127.0.0.1, downloads
with progress, checksum, a 404 and a cut connection, cancel, a local package added and removed."""
import hashlib
import json
import shutil

import pytest

from mtp_qgis import model_store
from plugin_test_support import REPO, serve_folder, wait_for, write_colour_model


@pytest.fixture()
def published(tmp_path):
    """A folder as `make package` publishes it: models and an index with one entry per way a download ends."""
    folder = tmp_path / "site"
    folder.mkdir()
    write_colour_model(folder / "colour_seg.onnx")
    shutil.copy(folder / "colour_seg.onnx", folder / "colour_cut.onnx")
    shutil.copy(folder / "colour_seg.onnx", folder / "bad_sum.onnx")
    write_colour_model(folder / "slow_model.onnx", tile_size=128, overlap=60, hidden_layers=24)
    entries = [model_store.index_entry(folder / "colour_seg.onnx", "colour_seg.onnx", "colour squares"),
               model_store.index_entry(folder / "bad_sum.onnx", "bad_sum.onnx"),
               dict(model_store.index_entry(folder / "colour_seg.onnx", "nothing_here.onnx"), id="missing"),
               model_store.index_entry(folder / "colour_cut.onnx", "cut/colour_cut.onnx"),
               model_store.index_entry(folder / "slow_model.onnx", "slow/slow_model.onnx")]
    entries[1]["sha256"] = "0" * 64  # the file is fine, the index says otherwise
    (folder / "index.json").write_text(json.dumps({"format_version": 1, "models": entries}))
    return folder


@pytest.fixture()
def panel(qgis_app, tmp_path, monkeypatch):
    from mtp_qgis.models_panel import ModelsPanel

    monkeypatch.setenv("MTP_QGIS_USER_MODELS_DIR", str(tmp_path / "user_models"))
    widget = ModelsPanel()
    yield widget
    widget.shutdown()
    widget.deleteLater()


def listed(panel, url):
    panel.index_url.setText(url + "index.json")
    panel.refresh()
    assert wait_for(lambda: panel.fetch is None, 30), panel.status.text()
    return [e["id"] for e in panel.available]


def download(panel, model_id):
    assert panel.select("available", model_id)
    panel.download_selected()
    assert wait_for(lambda: panel.download is None, 60), panel.status.text()
    return panel.status.text()


def user_files(tmp_path):
    folder = tmp_path / "user_models"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_index_lists_the_models_with_their_cards(panel, published):
    with serve_folder(published) as (url, server):
        assert listed(panel, url) == ["colour_seg", "bad_sum", "missing", "colour_cut", "slow_model"]
        assert panel.select("available", "colour_seg")
        card = panel.card.toPlainText()
    for words in ("Segmentation", "reddish, greenish, bluish, dark", "0.6 m/pixel", "red, green, blue",
                  "mIoU 0.000", "colour squares", "tests/plugin/conftest.py", url + "colour_seg.onnx"):
        assert words in card, card


def test_download_checks_the_checksum_and_installs_atomically(panel, published, tmp_path):
    progress = []
    with serve_folder(published) as (url, server):
        listed(panel, url)
        panel.select("available", "colour_seg")
        panel.download_selected()
        panel.download.progress.connect(lambda done, total: progress.append((done, total)))
        assert wait_for(lambda: panel.download is None, 60)
    installed = tmp_path / "user_models" / "colour_seg.onnx"
    assert "colour_seg installed (checksum verified)" in panel.status.text()
    assert user_files(tmp_path) == ["colour_seg.onnx"]
    assert hashlib.sha256(installed.read_bytes()).hexdigest() == hashlib.sha256(
        (published / "colour_seg.onnx").read_bytes()).hexdigest()
    assert progress and progress[-1][0] == progress[-1][1] == installed.stat().st_size
    assert panel.selected() == ("installed", "colour_seg")  # now listed as installed, with its card
    assert "reddish" in panel.card.toPlainText()


@pytest.mark.parametrize("model_id,words", [
    ("bad_sum", ["does not match the index's SHA-256", "Nothing was installed"]),
    ("missing", ["Downloading missing from", "nothing_here.onnx", "File not found", "Nothing was installed"]),
    ("colour_cut", ["colour_cut", "Connection closed", "Nothing was installed"]),
])
def test_failed_downloads_say_why_and_leave_nothing(panel, published, tmp_path, model_id, words):
    with serve_folder(published) as (url, server):
        listed(panel, url)
        text = download(panel, model_id)
    for word in words:
        assert word in text, text
    assert user_files(tmp_path) == []  # no model, no partial file


def test_cancelled_download_leaves_nothing(panel, published, tmp_path):
    with serve_folder(published) as (url, server):
        listed(panel, url)
        panel.select("available", "slow_model")
        panel.download_selected()
        assert wait_for(lambda: panel.progress.value() > 0, 30)
        panel.cancel_download()
        assert wait_for(lambda: panel.download is None, 30)
    assert "cancelled; nothing was installed" in panel.status.text()
    assert user_files(tmp_path) == []


def test_an_unreachable_or_broken_index_is_reported(panel, published):
    with serve_folder(published) as (url, server):
        assert listed(panel, url + "no/") == []
        assert "could not be read (HTTP 404)" in panel.status.text()
        (published / "broken.json").write_text('{"models": [{"id": "x"}]}')
        panel.index_url.setText(url + "broken.json")
        panel.refresh()
        assert wait_for(lambda: panel.fetch is None, 30)
        assert "entry 1 (x) lacks task, name, dataset, metric, size, sha256, url" in panel.status.text()


def test_add_a_local_package_then_remove_it(panel, tmp_path):
    import onnx

    source = tmp_path / "mine.onnx"
    write_colour_model(source)
    bare = onnx.load(str(source))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    (tmp_path / "junk.onnx").write_bytes(b"\xff" * 100)

    assert panel.add_from_file(str(tmp_path / "bare.onnx")) is None
    assert "bare.onnx is not an MTP model package" in panel.status.text()
    assert "import-model" in panel.status.text()
    assert panel.add_from_file(str(tmp_path / "junk.onnx")) is None
    assert "is not an ONNX model file" in panel.status.text()
    assert user_files(tmp_path) == []

    changed = []
    panel.changed.connect(lambda: changed.append(True))
    assert panel.add_from_file(str(source)) == tmp_path / "user_models" / "mine.onnx"
    assert panel.selected() == ("installed", "mine") and panel.remove_button.isEnabled()
    assert panel.add_from_file(str(source)) is None and "already installed" in panel.status.text()
    panel.remove_selected()
    assert user_files(tmp_path) == [] and changed == [True, True]
    assert "mine removed" in panel.status.text()


def test_models_of_other_folders_are_listed_but_not_removable(panel):
    seg = REPO / "resources" / "models" / "mtp_seg_default.onnx"
    panel.set_backend_models([{"id": "mtp_seg_default", "task": "semantic_segmentation", "path": str(seg)}])
    assert panel.select("installed", "mtp_seg_default")
    assert not panel.remove_button.isEnabled()
    card = panel.card.toPlainText()
    assert "mIoU 0.459" in card and "0.3 m/pixel" in card and "mobilenetv3_small_100" in card
