"""CPU session options chosen by measurement (backend.calibration): the measuring, the file it writes, the
sessions that use it, staleness, giving way to jobs, the CLI and the idle backend's own calibration."""

import json
import shutil

import numpy as np
import pytest
from osgeo import gdal

from backend import calibration, sessions
from backend.calibration import ORT_DEFAULT, PROJECT_DEFAULT, CpuOptions, Measurement, choose
from backend.cli import main
from backend.registry import ModelRegistry
from backend.server import calibrate_used_models

from backend_test_data import COGEO, REPO

SCENE_MODEL = REPO / "resources/models/mtp_scene_default.onnx"


@pytest.fixture()
def own_model(tmp_path, monkeypatch):
    """A copy of the bundled scene model (its own path: its own cached session) and a calibration folder."""
    monkeypatch.setattr(calibration, "CALIBRATION_DIR", tmp_path / "calibration")
    folder = tmp_path / "models"
    folder.mkdir()
    path = folder / "scene_copy.onnx"
    shutil.copyfile(SCENE_MODEL, path)
    return path


def real_batch(session) -> dict:
    """Four real 3-band crops of the aerial sample, scaled to 0..1, at the model's input size."""
    value = session.get_inputs()[0]
    size = value.shape[2] if isinstance(value.shape[2], int) else 224
    pixels = gdal.Open(str(COGEO)).ReadAsArray(0, 0, 4 * size, size).astype(np.float32) / 255.0
    return {value.name: np.stack([pixels[:3, :, i * size:(i + 1) * size] for i in range(4)])}


def test_choose_keeps_the_default_unless_another_is_clearly_faster():
    other = CpuOptions(True, 0)
    assert choose([Measurement(PROJECT_DEFAULT, 1.00), Measurement(other, 0.98)]) == PROJECT_DEFAULT
    assert choose([Measurement(PROJECT_DEFAULT, 1.00), Measurement(other, 0.90)]) == other
    assert choose([Measurement(PROJECT_DEFAULT, 0.80), Measurement(other, 0.90)]) == PROJECT_DEFAULT


def test_calibration_measures_every_candidate_and_sessions_use_its_choice(own_model, monkeypatch):
    record = calibration.calibrate(own_model, tile=224, batch=2, seconds=0.0, min_rounds=3)
    written = json.loads(calibration.calibration_file(own_model).read_text())
    assert written == record
    measured = [CpuOptions(**m["options"]) for m in record["measured"]]
    assert measured[:2] == [PROJECT_DEFAULT, ORT_DEFAULT] and len(set(measured)) == len(measured)
    assert all(m["batch_s"] > 0 for m in record["measured"]) and record["rounds"] == 3
    assert CpuOptions(**record["chosen"]) == choose([Measurement(CpuOptions(**m["options"]), m["batch_s"])
                                                    for m in record["measured"]])
    assert record["machine"] == calibration.machine()
    assert calibration.load(own_model) == CpuOptions(**record["chosen"])

    default_session = sessions.cpu_session(own_model, 1, PROJECT_DEFAULT)
    feeds = real_batch(default_session)
    expected = default_session.run(None, feeds)[0]
    # Whatever was chosen, a session built from a calibration runs with those options and computes the same.
    monkeypatch.setattr(calibration, "choose", lambda measured: ORT_DEFAULT)
    calibration.calibrate(own_model, tile=224, batch=1, seconds=0.0)
    info = sessions.session_info(own_model)
    assert info.settings.endswith("spinning on, static work split (calibrated)"), info.settings
    np.testing.assert_allclose(sessions.get_session(own_model).run(None, feeds)[0], expected, rtol=1e-5, atol=1e-6)


def test_a_calibration_from_another_machine_or_model_is_ignored(own_model, monkeypatch):
    calibration.calibrate(own_model, tile=224, batch=1, seconds=0.0)
    assert calibration.load(own_model) is not None
    here = calibration.machine()
    monkeypatch.setattr(calibration, "machine", lambda: dict(here, cpu="another CPU"))
    assert calibration.load(own_model) is None
    monkeypatch.undo()
    monkeypatch.setattr(calibration, "CALIBRATION_DIR", own_model.parent.parent / "calibration")
    import onnx

    changed = onnx.load(str(own_model))  # the model changed (here one more metadata entry): its content key too
    changed.metadata_props.add(key="note", value="retrained")
    onnx.save(changed, str(own_model))
    assert calibration.load(own_model) is None
    assert "(calibrated)" not in sessions.session_info(own_model).settings


def test_calibration_gives_way_to_a_job_and_writes_nothing(own_model):
    asked = []

    def busy():
        asked.append(1)
        return len(asked) > 3  # a job arrives while the candidates are measured

    with pytest.raises(calibration.Busy):
        calibration.calibrate(own_model, tile=224, batch=1, seconds=60.0, busy=busy)
    assert not calibration.CALIBRATION_DIR.exists() or not any(calibration.CALIBRATION_DIR.iterdir())


def test_an_idle_backend_calibrates_the_models_it_ran_once(own_model):
    registry = ModelRegistry([own_model.parent])
    sessions.get_session(own_model)  # the backend ran a job with it
    calibrate_used_models(registry, busy=lambda: False, seconds=0.5)
    path = calibration.calibration_file(own_model)
    assert calibration.load(own_model) is not None
    first = path.read_text()
    calibrate_used_models(registry, busy=lambda: False, seconds=0.5)  # valid now: not measured again
    assert path.read_text() == first


def test_cli_calibrates_and_prints_the_measurements(own_model, capsys):
    assert main(["calibrate", "--model", "scene_copy", "--seconds", "0.2", "--batch-size", "1",
                 "--models-dir", str(own_model.parent)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("scene_copy: ") and out.count("s/batch") >= 4 and out.count("<- chosen") == 1
    assert calibration.load(own_model) is not None
    assert main(["calibrate", "--model", "nothing", "--models-dir", str(own_model.parent)]) == 2
    assert "Unknown model 'nothing'" in capsys.readouterr().err
