"""Run by test_impostor.py in a process of its own (it needs PyQGIS and an environment of its own): the
plugin's BackendManager finds the state file of a backend that died, whose port another program now holds,
and must start its own backend instead of sending the token there. Prints JSON: the URL it ended up with,
whether that backend answers an authenticated request, and the pid of the backend it started."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from qgis.core import QgsApplication

app = QgsApplication([], False)
app.initQgis()
from mtp_qgis.backend_process import BACKEND  # noqa: E402

try:
    client = BACKEND.client()
    models = [m["id"] for m in client.models()]
    print(json.dumps({"url": client.url, "models": models, "started_pid": BACKEND.pid}))
finally:
    BACKEND.stop()
