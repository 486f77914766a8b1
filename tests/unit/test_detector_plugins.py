"""Detectors are plug-ins: one module in anomaly_detection/detect/detectors/ is all a new one needs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from anomaly_detection import config
from anomaly_detection.detect import detectors
from anomaly_detection.detect.detectors import REGISTRY, Detector, register

PACKAGE = Path(detectors.__file__).parents[2]


def test_the_registry_drives_the_config():
    assert set(config.ALGORITHMS) == set(REGISTRY) >= {
        "isolation_forest", "kmeans", "bisecting_kmeans", "dbscan", "knn", "local_outlier_factor", "ensemble",
    }  # fmt: skip
    for name, detector in REGISTRY.items():
        assert config.DEFAULT_GRIDS[name] == detector.grids and config.GRID_PARAMS[name] == detector.params


def test_register_checks_the_grids():
    with pytest.raises(ValueError, match="exactly 'simple' and 'complex'"):
        register(Detector("x", lambda *a: None, {"simple": {}}, frozenset()))
    with pytest.raises(ValueError, match="unknown parameter"):
        register(Detector("x", lambda *a: None, {"simple": {"k": [1]}, "complex": {}}, frozenset()))
    with pytest.raises(ValueError, match="two detectors are named 'knn'"):
        register(Detector("knn", lambda *a: None, {"simple": {}, "complex": {}}, frozenset()))


def test_one_new_file_adds_a_detector_the_config_and_the_grid_runner_accept(tmp_path):
    copy = tmp_path / "anomaly_detection"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "detect" / "detectors" / "zscore.py").write_text(
        textwrap.dedent(
            '''
            """Largest absolute z-score of a row's features."""
            import time

            import numpy as np

            from .base import Detection, Detector, register, top_share_labels


            def zscore(X, params, settings):
                started = time.perf_counter()
                scores = np.abs((X - X.mean(axis=0)) / (X.std(axis=0) + 1e-12)).max(axis=1) ** params.get("power", 1)
                labels, threshold = top_share_labels(scores, settings.contamination)
                return Detection("zscore", dict(params), scores, labels, threshold, time.perf_counter() - started)


            register(Detector("zscore", zscore, {"simple": {"power": [1]}, "complex": {"power": [1, 2]}}, frozenset({"power"})))
            '''
        )
    )
    script = textwrap.dedent(
        """
        import numpy as np
        from anomaly_detection.config import build_config
        from anomaly_detection.detect.grid import DetectorSettings, run_grid
        cfg = build_config({"modeling.algorithms": ["zscore", "isolation_forest"], "modeling.hyperparameters": "complex"})
        X = np.random.default_rng(0).normal(size=(200, 3)); X[7] = 9
        runs = list(run_grid("zscore", cfg.modeling.grid_for("zscore"), X, DetectorSettings(contamination=0.01)))
        assert [r.params for r in runs] == [{"power": 1}, {"power": 2}]
        assert runs[0].labels[7] == 1
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path)},
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
