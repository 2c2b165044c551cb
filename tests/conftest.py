"""Settings every test process and every backend the tests start (they inherit the environment) share."""
import os
import tempfile

# Backends measure CPU options when idle (backend.calibration); in the suite that would be CPU taken from the
# tests running beside them, and results measured on a developer's machine would change the sessions the tests
# use. tests/backend/test_calibration.py turns both on where it tests them.
os.environ["MTP_QGIS_CALIBRATE"] = "0"
os.environ["MTP_QGIS_CALIBRATION_DIR"] = tempfile.mkdtemp(prefix="mtp_calibration_")
