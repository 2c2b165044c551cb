"""Processing algorithm mtp:segment — semantic segmentation of a raster layer by the backend."""
import glob
import os
import time
import uuid
from pathlib import Path

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterExtent,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
)
from qgis.PyQt.QtGui import QIcon

from . import rendering, styling
from .backend_process import BACKEND
from .client import BackendError, BackendUnreachable
from .settings import DEFAULT_MODEL_ID

ICON_PATH = str(Path(__file__).resolve().parent / "icons" / "mtp.svg")
TASK = "semantic_segmentation"
POLL_INTERVAL_S = 0.25
CANCEL_WAIT_S = 30.0
LOST_BACKEND_RETRIES = 3


def remove_partials(output_path):
    """Remove `<dir>/.<name>.*.partial*` left by a job whose backend disappeared."""
    out = Path(output_path)
    patterns = {f".{out.stem}.*.partial*", f".{out.name}.*.partial*"}
    for pattern in patterns:
        for leftover in glob.glob(os.path.join(glob.escape(str(out.parent)), pattern)):
            try:
                os.remove(leftover)
            except OSError:
                pass


def crs_string(crs):
    """authid when there is one (short, what GDAL likes), else WKT, else '' for 'no CRS'."""
    if not crs.isValid():
        return ""
    return crs.authid() or crs.toWkt(QgsCoordinateReferenceSystem.WktVariant.WKT_PREFERRED)


class SegmentAlgorithm(QgsProcessingAlgorithm):
    INPUT = "INPUT"
    EXTENT = "EXTENT"
    MODEL = "MODEL"
    OUTPUT = "OUTPUT"

    def name(self):
        return "segment"

    def displayName(self):  # noqa: N802
        return "Semantic segmentation"

    def group(self):
        return "Segmentation"

    def groupId(self):  # noqa: N802
        return "segmentation"

    def icon(self):
        return QIcon(ICON_PATH)

    def shortHelpString(self):  # noqa: N802
        return (
            "Classifies every pixel of a raster layer with a segmentation model run by the local MTP backend.\n\n"
            "Input: any raster layer. GDAL files are read directly; web, virtual or memory layers are first "
            "rendered at the model's ground sample distance.\n"
            "Extent: optional, in any CRS; the result covers it clipped to the raster.\n"
            f"Model: id of a model the backend knows (default {DEFAULT_MODEL_ID}).\n"
            "Output: GeoTIFF of class ids (255 = nodata) on the source's pixel grid, with a .qml style "
            "holding the class names and colours."
        )

    def createInstance(self):  # noqa: N802
        return SegmentAlgorithm()

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Input raster"))
        self.addParameter(
            QgsProcessingParameterExtent(self.EXTENT, "Extent (leave empty for the whole raster)", optional=True)
        )
        self.addParameter(QgsProcessingParameterString(self.MODEL, "Model id", defaultValue=DEFAULT_MODEL_ID))
        self.addParameter(
            QgsProcessingParameterRasterDestination(self.OUTPUT, "Segmentation")
        )

    # --- helpers -------------------------------------------------------------------------------

    def _requested_extent(self, parameters, context, layer):
        """(QgsRectangle, QgsCoordinateReferenceSystem) or (None, None) when no extent was given."""
        if parameters.get(self.EXTENT) in (None, ""):
            return None, None
        rect = self.parameterAsExtent(parameters, self.EXTENT, context)
        if rect is None or rect.isNull() or rect.isEmpty():
            return None, None
        crs = self.parameterAsExtentCrs(parameters, self.EXTENT, context)
        if not crs.isValid() or not layer.crs().isValid():
            # No CRS on one side: the numbers are taken in the raster's own (QGIS-displayed) coordinates.
            crs = layer.crs()
        return rect, crs

    def _input_for_backend(self, layer, rect, crs, model, context, feedback):
        """(path, extent dict or None, temporary file or None) for the job request."""
        path = rendering.local_file_path(layer)
        if path:
            if rect is None:
                return path, None, None
            extent = {"xmin": rect.xMinimum(), "ymin": rect.yMinimum(), "xmax": rect.xMaximum(),
                      "ymax": rect.yMaximum(), "crs": crs_string(crs)}
            return path, extent, None
        render_extent = layer.extent()
        if rect is not None:
            if crs.isValid() and layer.crs().isValid() and crs != layer.crs():
                transform = QgsCoordinateTransform(crs, layer.crs(), context.transformContext())
                rect = transform.transformBoundingBox(rect)
            render_extent = rect.intersect(layer.extent())
            if render_extent.isEmpty():
                raise QgsProcessingException("The extent does not intersect the input layer.")
        temporary = os.path.join(QgsProcessingUtils.tempFolder(), f"mtp_input_{uuid.uuid4().hex}.tif")
        feedback.pushInfo(
            f"Layer '{layer.name()}' is not a local GDAL file (provider {layer.providerType()}); "
            f"rendering it at {model['gsd_m']} m/pixel to {temporary}"
        )
        try:
            rendering.render_to_geotiff(layer, render_extent, float(model["gsd_m"]), temporary,
                                        context.transformContext())
        except ValueError as exc:
            raise QgsProcessingException(str(exc)) from exc
        return temporary, None, temporary

    def _wait_for_job(self, client, job, output, feedback):
        job_id = job["id"]
        last_message = None
        lost = 0
        while True:
            if feedback.isCanceled():
                self._cancel_job(client, job_id, output, feedback)
                raise QgsProcessingException("Segmentation cancelled; no output was written.")
            try:
                job = client.job(job_id)
                lost = 0
            except BackendUnreachable as exc:
                lost += 1
                if lost < LOST_BACKEND_RETRIES:
                    time.sleep(POLL_INTERVAL_S * 2)
                    continue
                remove_partials(output)
                raise QgsProcessingException(
                    f"The MTP backend stopped while running job {job_id}; the partial output was removed. "
                    f"Run the algorithm again (the plugin restarts the backend). Details: {exc}"
                ) from exc
            except BackendError as exc:
                raise QgsProcessingException(str(exc)) from exc
            feedback.setProgress(float(job.get("progress") or 0.0))
            message = job.get("message")
            if message and message != last_message:
                feedback.pushInfo(message)
                last_message = message
            status = job.get("status")
            if status == "succeeded":
                return job
            if status == "failed":
                reason = job.get("error") or "no reason given"
                raise QgsProcessingException(f"Segmentation failed in the backend: {reason}")
            if status == "cancelled":
                raise QgsProcessingException(
                    "The segmentation job was cancelled in the backend; no output was written.")
            time.sleep(POLL_INTERVAL_S)

    def _cancel_job(self, client, job_id, output, feedback):
        feedback.pushInfo(f"Cancelling job {job_id}...")
        try:
            client.cancel(job_id)
            deadline = time.monotonic() + CANCEL_WAIT_S
            while time.monotonic() < deadline:
                if client.job(job_id).get("status") in ("cancelled", "failed", "succeeded"):
                    break
                time.sleep(POLL_INTERVAL_S)
        except BackendError:
            pass  # the backend is gone: nothing left to stop, only files to tidy
        remove_partials(output)

    # --- main ------------------------------------------------------------------------------------

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException(self.invalidRasterError(parameters, self.INPUT))
        model_id = (self.parameterAsString(parameters, self.MODEL, context) or DEFAULT_MODEL_ID).strip()
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        output = os.path.abspath(output)
        if Path(output).suffix.lower() not in (".tif", ".tiff"):
            raise QgsProcessingException(f"The output must be a GeoTIFF (.tif), not '{output}'.")
        os.makedirs(os.path.dirname(output), exist_ok=True)

        try:
            client = BACKEND.client()
            model = client.model(model_id)
        except BackendError as exc:
            raise QgsProcessingException(str(exc)) from exc
        if model.get("task") != TASK:
            raise QgsProcessingException(
                f"Model '{model_id}' does the task '{model.get('task')}', not {TASK}. Choose a segmentation model."
            )
        feedback.pushInfo(f"Backend {BACKEND.describe(client.url)}, model {model_id} ({model.get('name', '')})")

        rect, crs = self._requested_extent(parameters, context, layer)
        source, extent, temporary = self._input_for_backend(layer, rect, crs, model, context, feedback)
        request = {"task": TASK, "model": model_id, "inputs": [source], "outputs": {"raster": output},
                   "options": {}}
        if extent is not None:
            request["extent"] = extent
        try:
            try:
                job = client.submit(request)
            except BackendError as exc:
                raise QgsProcessingException(str(exc)) from exc
            feedback.pushInfo(f"Job {job['id']} submitted")
            job = self._wait_for_job(client, job, output, feedback)
        finally:
            if temporary and os.path.exists(temporary):
                os.remove(temporary)

        output = (job.get("outputs") or {}).get("raster", output)
        qml = styling.write_style_file(output, model.get("classes", []))
        if qml:
            feedback.pushInfo(f"Style with the class names written to {qml}")
        if context.willLoadLayerOnCompletion(output):
            details = context.layerToLoadOnCompletionDetails(output)
            details.setPostProcessor(styling.ClassStylePostProcessor.create(model.get("classes", [])))
        return {self.OUTPUT: output}
