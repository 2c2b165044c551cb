"""The dock's "Extract land cover" entry: the instruction box and sensor choice, a run on the real NAIP raster with
the bundled multispectral model, the result styled by class with the explanation as map tip and display
expression; an instruction the grammar does not understand shown in the status line, nothing added."""
import pytest
from qgis.core import QgsProject, QgsVectorLayer

from plugin_test_support import NAIP_2020, dock_on, run_dock

pytestmark = [pytest.mark.usefixtures("plugin"), pytest.mark.slow]
TASK = "land_cover_extraction"


def test_dock_extracts_water_with_explanations(use_backend, out_dir):
    with dock_on(use_backend, NAIP_2020, "naip", task=TASK) as (dock, layer):
        assert dock.model_ids() == ["mtp_landcover_default"]
        assert dock.instruction.isVisibleTo(dock) and dock.sensor_combo.isVisibleTo(dock)
        assert not dock.cell_size.isVisibleTo(dock) and not dock.after_combo.isVisibleTo(dock)
        dock.output_dir.setFilePath(str(out_dir))
        dock.instruction.setText("extract water bodies larger than half a hectare")
        dock.sensor_combo.setCurrentIndex(dock.sensor_combo.findData("naip"))
        params = dock.parameters()
        assert params["INSTRUCTION"] == "extract water bodies larger than half a hectare" and params["SENSOR"] == 4
        assert params["OUTPUT"].endswith(".gpkg") and "_land_cover_" in params["OUTPUT"]
        added = run_dock(dock)
        assert len(added) == 1, dock.status.text()
        result = added[0]
        assert isinstance(result, QgsVectorLayer) and result.featureCount() >= 10
        assert result.name() == "naip – mtp_landcover_default"
        assert result.renderer().classAttribute() == "class_name"
        assert [c.value() for c in result.renderer().categories()] == ["water", "vegetation", "built-up", "bare soil"]
        assert '"explanation"' in result.mapTipTemplate() and result.displayExpression() == '"explanation"'
        explanations = [f["explanation"] for f in result.getFeatures()]
        assert all(e.startswith("NDWI ") and "open water" in e for e in explanations)
        assert "explanation" in result.fields().names() and "area_m2" in result.fields().names()
        QgsProject.instance().removeMapLayer(result.id())

        dock.instruction.setText("find the glaciers")
        assert run_dock(dock) == []
        assert "'glaciers'" in dock.status.toolTip() + dock.status.text()
        dock.instruction.setText("  ")
        dock.run()
        assert "Write an instruction first" in dock.status.text()
        dock.set_task("semantic_segmentation")  # the instruction belongs to land cover only
        assert not dock.instruction.isVisibleTo(dock) and not dock.sensor_combo.isVisibleTo(dock)
