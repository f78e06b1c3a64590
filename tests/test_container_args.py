"""The image's command line: `train` or nothing trains, `serve` and anything else are refused.

SageMaker's service runs `IMAGE train`; the SDK's local mode (ModelTrainer with
Mode.LOCAL_CONTAINER) runs the image with no command. The image's CMD (checked by
container/smoke) covers the second case, and main() defaults to train as well, for engines or
launchers that override CMD with an empty one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from roadsense.adapters.sagemaker import SageMakerPaths, main


def _malformed_job(root: Path, monkeypatch: pytest.MonkeyPatch) -> SageMakerPaths:
    """A job that the train path rejects at once (no SUMO, no torch): its failure file shows that path ran."""
    paths = SageMakerPaths(root)
    paths.hyperparameters.parent.mkdir(parents=True)
    paths.hyperparameters.write_text('{"preset": ')
    monkeypatch.setenv("ROADSENSE_SM_ROOT", str(root))
    return paths


def test_no_argument_runs_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _malformed_job(tmp_path, monkeypatch)
    assert main([]) == 2
    assert "not valid JSON" in paths.failure.read_text()


def test_the_console_script_with_no_argument_runs_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What the ENTRYPOINT does when the engine passes no command: main() reads sys.argv.
    paths = _malformed_job(tmp_path, monkeypatch)
    monkeypatch.setattr(sys, "argv", ["/opt/venv/bin/roadsense-container"])
    assert main() == 2
    assert "not valid JSON" in paths.failure.read_text()


def test_serve_is_refused_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture) -> None:
    _malformed_job(tmp_path, monkeypatch)
    assert main(["serve"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "serve is not supported" in captured.err
    # Refused before the train path: no output folder, no failure file.
    assert not (tmp_path / "output").exists()


@pytest.mark.parametrize("args", [["bogus"], ["train", "extra"], ["--help"], ["Train"]])
def test_anything_else_prints_usage(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture) -> None:
    _malformed_job(tmp_path, monkeypatch)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: roadsense-container train") and "serve" not in err
    assert not (tmp_path / "output").exists()
