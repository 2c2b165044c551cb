"""The plugin as an analyst installs it: from the zip `make package` builds, with its bundled backend."""
import subprocess
import sys

import pytest

from plugin_test_support import BACKEND_PYTHON, LOVEDA_PNG, REPO, run_qgis_process


pytestmark = pytest.mark.slow  # the whole file (README.md, Development): not in `make test-fast`


@pytest.fixture(scope="module")
def installed_plugins(tmp_path_factory):
    package = REPO / "scripts" / "package.py"
    if not package.is_file():
        pytest.skip("scripts/package.py does not exist yet")
    folder = tmp_path_factory.mktemp("installed")
    zip_path = folder / "mtp_qgis.zip"
    subprocess.run([sys.executable, str(package), "--out", str(zip_path)], check=True, capture_output=True)
    plugins = folder / "plugins"
    import zipfile

    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(plugins)
    if not (plugins / "mtp_qgis" / "backend_bundle" / "backend" / "__main__.py").is_file():
        pytest.skip("the zip carries no backend_bundle")
    return plugins


def test_installed_plugin_starts_its_bundled_backend(installed_plugins, qgis_process_env, models_dir, tmp_path):
    env = dict(qgis_process_env, QGIS_PLUGINPATH=str(installed_plugins), MTP_QGIS_BACKEND_PYTHON=BACKEND_PYTHON,
               MTP_QGIS_MODELS_DIR=str(models_dir), MTP_QGIS_STATE_FILE=str(tmp_path / "backend.json"))
    out = tmp_path / "out.tif"
    done, result = run_qgis_process(env, "run", "mtp:segment", "--", f"INPUT={LOVEDA_PNG}", f"OUTPUT={out}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert out.is_file() and out.with_suffix(".qml").is_file()
    assert f"started by this QGIS from {installed_plugins / 'mtp_qgis' / 'backend_bundle'}" in done.stdout
