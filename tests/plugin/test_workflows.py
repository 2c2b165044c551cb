"""The ways an analyst runs mtp:segment besides the toolbox: modeler, batch dialog, dock, own backend."""
import os
from pathlib import Path

import pytest
from qgis.core import (
    QgsProcessingFeedback,
    QgsProcessingModelAlgorithm,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)

from model_builder import segment_and_count_model
from plugin_test_support import COGEO, DATA, LOVEDA_PNG, dock_on, run_batch_rows, run_dock, wait_for

pytestmark = pytest.mark.usefixtures("use_backend", "plugin")


def table_values(path):
    layer = QgsVectorLayer(str(path), "t", "ogr")
    assert layer.isValid(), path
    return {int(f["value"]): int(f["count"]) for f in layer.getFeatures()}


def test_modeler_model_chains_segment_with_a_native_algorithm(out_dir):
    import processing

    model = segment_and_count_model()
    path = out_dir / "segment_and_count.model3"
    assert model.toFile(str(path))
    reloaded = QgsProcessingModelAlgorithm()
    assert reloaded.fromFile(str(path))
    outputs = {p.name() for p in reloaded.destinationParameterDefinitions()}
    assert outputs == {"segment:classes", "count:class_table"}
    table = out_dir / "counts.gpkg"
    result = processing.run(reloaded, {"image": str(COGEO), "segment:classes": str(out_dir / "classes.tif"),
                                       "count:class_table": str(table)}, feedback=QgsProcessingFeedback())
    assert os.path.exists(result["segment:classes"])
    counts = table_values(result["count:class_table"])
    assert set(counts) <= {0, 1, 2, 3} and len(counts) >= 2
    assert sum(counts.values()) == 1024 * 1024


def test_batch_dialog_code_path(out_dir):
    """What BatchAlgorithmDialog.runAlgorithm does: one context per row, a failing row does not stop the rest."""
    inputs = [COGEO, LOVEDA_PNG, DATA / "potsdam" / "img_dir" / sorted(os.listdir(DATA / "potsdam" / "img_dir"))[0]]
    rows = [{"INPUT": str(p), "MODEL": "mtp_seg_default", "OUTPUT": str(out_dir / f"batch_{i}.tif")}
            for i, p in enumerate(inputs)]
    rows.insert(1, {"INPUT": str(COGEO), "MODEL": "no_such_model", "OUTPUT": str(out_dir / "batch_bad.tif")})
    assert run_batch_rows("mtp:segment", rows) == [True, False, True, True]
    for i, src in enumerate(inputs):
        result = QgsRasterLayer(str(out_dir / f"batch_{i}.tif"), "r", "gdal")
        source = QgsRasterLayer(str(src), "s", "gdal")
        assert (result.width(), result.height()) == (source.width(), source.height())
        assert (out_dir / f"batch_{i}.qml").is_file()
    assert not (out_dir / "batch_bad.tif").exists()


def test_dock_runs_the_algorithm_as_a_task_and_adds_a_styled_layer(backend):
    with dock_on(backend, LOVEDA_PNG, "loveda 2") as (dock, layer):
        assert {"mtp_seg_default", "slow_seg"} <= set(dock.model_ids())
        # Listed by name, dataset and figure (as the backend reports them), not by file name.
        label = dock.model_combo.itemText(dock.model_ids().index("mtp_seg_default"))
        info = dock._models["mtp_seg_default"]
        assert info["metric"].startswith("mIoU ") and label == f"{info['name']} ({info['metric']})"
        dock.model_combo.setCurrentText("mtp_seg_default")
        added = run_dock(dock)
        assert len(added) == 1, dock.status.text()
        result = added[0]
        assert result.renderer().type() == "paletted"
        legend = [c.label for c in result.renderer().classes()]
        assert legend == ["reddish", "greenish", "bluish", "dark"]
        assert dock.progress.value() == 100
        assert result.extent() == layer.extent()
        QgsProject.instance().removeMapLayer(result.id())


def test_dock_cancel(backend):
    with dock_on(backend, COGEO, "cogeo") as (dock, _):
        dock.model_combo.setCurrentText("slow_seg")
        before = set(QgsProject.instance().mapLayers())
        dock.run()
        assert wait_for(lambda: dock.progress.value() > 0)
        dock.cancel()
        assert wait_for(lambda: dock.run_button.isEnabled())
        assert "Cancelled" in dock.status.text()
        assert set(QgsProject.instance().mapLayers()) == before


def test_dock_saves_in_the_chosen_folder_and_shows_why_a_run_failed(backend, tmp_path):
    with dock_on(backend, LOVEDA_PNG, "loveda 2") as (dock, _):
        dock.output_dir.setFilePath(str(tmp_path / "kept"))
        try:
            dock.model_combo.setCurrentText("mtp_seg_default")
            added = run_dock(dock)
            assert len(added) == 1, dock.status.text()
            saved = Path(added[0].source())
            assert saved.parent == tmp_path / "kept" and saved.with_suffix(".qml").exists()
            QgsProject.instance().removeMapLayer(added[0].id())

            dock.model_combo.setCurrentText("no_such_model")
            assert run_dock(dock) == []
            assert dock.status.text().startswith("Segmentation failed:")
            assert "no_such_model" in dock.status.text()
            assert sorted(p.suffix for p in (tmp_path / "kept").iterdir()) == [".qml", ".tif"]
        finally:
            dock.output_dir.setFilePath("")  # the folder is remembered in QgsSettings: leave none behind


def test_shipped_model3_matches_the_builder():
    shipped = QgsProcessingModelAlgorithm()
    assert shipped.fromFile(str(Path(__file__).resolve().parent / "data" / "segment_and_count.model3"))
    built = segment_and_count_model()
    assert shipped.childAlgorithms().keys() == built.childAlgorithms().keys()
    assert shipped.childAlgorithm("segment").algorithmId() == "mtp:segment"
    # Every step box in the modeler carries a title (it used to be drawn untitled).
    titles = {child_id: child.description() for child_id, child in shipped.childAlgorithms().items()}
    assert titles == {child_id: child.description() for child_id, child in built.childAlgorithms().items()}
    assert titles == {"segment": "Segment the image (MTP)", "count": "Count pixels per class"}


def test_dock_uses_the_map_extent_when_asked(qgis_app):
    from qgis.core import QgsCoordinateReferenceSystem, QgsRectangle
    from qgis.gui import QgsMapCanvas

    from mtp_qgis.dock import MtpDockWidget

    class Iface:
        canvas = QgsMapCanvas()

        def mapCanvas(self):  # noqa: N802
            return self.canvas

    iface = Iface()
    iface.canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:4326"))
    iface.canvas.resize(400, 400)
    iface.canvas.setExtent(QgsRectangle(10, 40, 11, 41))
    layer = QgsRasterLayer(str(COGEO), "cogeo", "gdal")
    QgsProject.instance().addMapLayer(layer)
    dock = MtpDockWidget(iface)
    try:
        dock.layer_combo.setLayer(layer)
        assert "EXTENT" not in dock.parameters()
        dock.extent_check.setChecked(True)
        params = dock.parameters()
        assert params["INPUT"] == layer.id() and params["OUTPUT"].endswith(".tif")
        assert params["EXTENT"].endswith("[EPSG:4326]")
        xmin, xmax, ymin, ymax = (float(v) for v in params["EXTENT"].split(" ")[0].split(","))
        assert xmin <= 10 and xmax >= 11 and ymin <= 40 and ymax >= 41
    finally:
        QgsProject.instance().removeMapLayer(layer.id())
        dock.deleteLater()


def test_plugin_starts_reuses_and_stops_its_own_backend(models_dir, sandbox, monkeypatch):
    from mtp_qgis.backend_process import BackendManager

    monkeypatch.delenv("MTP_QGIS_BACKEND_URL", raising=False)
    monkeypatch.setenv("MTP_QGIS_STATE_FILE", str(sandbox / "state" / "own.json"))
    monkeypatch.setenv("MTP_QGIS_MODELS_DIR", str(models_dir))
    manager = BackendManager()
    client = manager.client()
    process = manager.started_process
    assert process is not None and process.poll() is None
    assert {m["id"] for m in client.models()} >= {"mtp_seg_default"}
    other = BackendManager()  # e.g. a second QGIS: finds it through the state file, starts nothing
    assert other.client().url == client.url and other.started_process is None
    manager.stop()
    assert process.poll() is not None
    assert not (sandbox / "state" / "own.json").exists()


def test_backend_that_cannot_start_reports_its_log(sandbox, monkeypatch, tmp_path):
    from mtp_qgis.backend_process import BackendManager
    from mtp_qgis.client import BackendError

    monkeypatch.delenv("MTP_QGIS_BACKEND_URL", raising=False)
    monkeypatch.setenv("MTP_QGIS_STATE_FILE", str(tmp_path / "state.json"))
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'fastapi'\" >&2\nexit 3\n")
    fake_python.chmod(0o755)
    monkeypatch.setenv("MTP_QGIS_BACKEND_PYTHON", str(fake_python))
    with pytest.raises(BackendError, match="(?s)exited with code 3.*lacks packages.*No module named 'fastapi'"):
        BackendManager().client()
