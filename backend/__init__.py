"""mtp_qgis backend: ONNX Runtime inference over GDAL rasters, served over loopback HTTP.

Never imports torch: models arrive as self-describing ONNX packages (see docs/contract.md).
"""

__version__ = "0.1.0"
