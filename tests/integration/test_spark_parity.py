"""Native <-> Spark parity of the detectors scored in Python on the executors (Isolation Forest, HBOS,
ECOD, the default ensemble) and of the ``auto`` cut, at 100k rows x 12 columns.

One preprocess and one detect run (all three detectors, a fixed 5 %), then one detect run of the
ensemble with ``contamination: auto``; the native detectors run on Spark's own features, so only the
detectors are compared. The job bodies run in the session's local SparkSession (``spark_session``).
"""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from spark_helpers import flagged_positions, java_available, run_in_process, spark_features, write_run

from anomaly_detection.config import load_config
from anomaly_detection.detect.detectors import REGISTRY, DetectorSettings
from anomaly_detection.detect.detectors.hbos import histogram_scores
from anomaly_detection.detect.threshold import cut_scores
from anomaly_detection.spark.jobs.common import POS
from anomaly_detection.spark.submit import SPARK_ALGORITHMS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.airflow_lane,  # about 2 minutes of Spark: the airflow lane has the room
    pytest.mark.skipif(not java_available(), reason="Java is not on PATH"),
]
ROWS = 100_000
COLUMNS = 12
PLANTED = 1_000
TOP = 0.05
PARAMS = {
    "isolation_forest": {"n_estimators": 100, "max_samples": 256},
    "hbos": {"n_bins": 10},
    "ecod": {},
    "ensemble": {"n_neighbors": 5},
}


def parity_table(n: int = ROWS, seed: int = 5) -> tuple[pd.DataFrame, np.ndarray]:
    """Four correlated clusters in 12 numeric columns, a skewed column; ``PLANTED`` anomalies: half
    far from every cluster, half with one extreme value; a 0/1 label."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-5, 5, (4, COLUMNS))
    mixing = rng.normal(0, 0.6, (COLUMNS, COLUMNS))
    X = centres[rng.integers(0, 4, n)] + rng.normal(0, 1, (n, COLUMNS)) @ mixing
    X[:, -1] = rng.lognormal(0, 0.7, n)
    planted = np.sort(rng.choice(n, PLANTED, replace=False))
    far, single = planted[: PLANTED // 2], planted[PLANTED // 2 :]
    X[far] = rng.uniform(-20, 20, (len(far), COLUMNS))
    X[single, rng.integers(0, COLUMNS, len(single))] += rng.choice([-1, 1], len(single)) * rng.uniform(
        12, 20, len(single)
    )
    table = pd.DataFrame(X, columns=[f"m{i}" for i in range(COLUMNS)])
    table["label"] = np.isin(np.arange(n), planted).astype(np.int64)
    return table, planted


@pytest.fixture(scope="module")
def parity(tmp_path_factory, spark_session):
    table, planted = parity_table()
    overrides = {
        "modeling": {
            "algorithms": list(PARAMS),
            "grids": {name: {"simple": {k: [v] for k, v in p.items()}} for name, p in PARAMS.items()},
            "contamination": TOP,
        },
        "evaluation": {"label_column": "label"},
    }
    paths, config_path = write_run(tmp_path_factory.mktemp("spark_parity"), table, overrides)
    config = load_config(config_path)
    seconds = {}
    for job in ("preprocess", "detect"):
        started = time.perf_counter()
        run_in_process(spark_session, job, paths.root, config_path)
        seconds[job] = round(time.perf_counter() - started, 1)
    spark = {
        name: {
            "flagged": flagged_positions(paths, name),
            "result": json.loads((paths.models / f"{name}.json").read_text())[0],
        }
        for name in PARAMS
    }
    # the ensemble again, contamination auto
    auto_config = yaml.safe_load(config_path.read_text())
    auto_config["modeling"]["contamination"] = "auto"
    auto_path = paths.root / "config.auto.yaml"
    auto_path.write_text(yaml.safe_dump(auto_config, sort_keys=False))
    started = time.perf_counter()
    run_in_process(spark_session, "detect", paths.root, auto_path, algorithm="ensemble")
    seconds["detect ensemble auto"] = round(time.perf_counter() - started, 1)
    spark["ensemble_auto"] = {
        "flagged": flagged_positions(paths, "ensemble"),
        "result": json.loads((paths.models / "ensemble.json").read_text())[0],
    }
    kept, features, _ = spark_features(paths)
    X = features.to_numpy()
    settings = DetectorSettings(contamination=TOP, random_state=config.modeling.random_state)
    native = {name: REGISTRY[name].detect(X, params, settings) for name, params in PARAMS.items()}
    print(f"\nSpark parity run at {ROWS:,} rows: {seconds}")
    return {"spark": spark, "native": native, "kept": kept, "planted": planted, "config": config}


def _top_positions(kept: np.ndarray, scores: np.ndarray, share: float) -> np.ndarray:
    top = int(np.ceil(share * len(scores)))
    return kept[np.argsort(-scores, kind="stable")[:top]]


@pytest.mark.parametrize("algorithm", list(PARAMS))
def test_spark_and_native_top_five_percent_overlap(parity, algorithm):
    """|A ∩ B| / |A|, A the native top 5 % of rows, B the rows Spark flags at contamination 0.05."""
    native = _top_positions(parity["kept"], parity["native"][algorithm].scores, TOP)
    spark = parity["spark"][algorithm]["flagged"]
    overlap = len(np.intersect1d(native, spark)) / len(native)
    print(f"\n{algorithm}: top-{len(native)} overlap native/Spark {overlap:.2%} (Spark flags {len(spark)})")
    assert abs(len(spark) - len(native)) <= max(2, int(1e-3 * ROWS))
    assert overlap >= 0.9
    result = parity["spark"][algorithm]["result"]
    assert result["info"]["engine"] == "spark" and result["roc_auc"] > 0.9


def test_the_ensemble_on_spark_reports_its_members(parity):
    info = parity["spark"]["ensemble"]["result"]["info"]
    native = parity["native"]["ensemble"].info
    assert info["members"] == native["members"]
    assert info["member_agreement"] == pytest.approx(native["member_agreement"], abs=0.05)


def test_the_auto_cut_of_the_ensemble_on_spark_is_the_native_rule(parity):
    native_scores = parity["native"]["ensemble"].scores
    cut = cut_scores(native_scores, "auto", seed=parity["config"].modeling.random_state)
    native_count = int(cut.labels.sum())
    result = parity["spark"]["ensemble_auto"]["result"]
    spark_count = len(parity["spark"]["ensemble_auto"]["flagged"])
    print(
        f"\nensemble auto: native {native_count} rows ({cut.basis}); Spark {spark_count} ({result['info']['threshold_rule']})"
    )
    same_case = re.sub(r"[0-9][0-9.,]*", "#", result["info"]["threshold_rule"]) == re.sub(
        r"[0-9][0-9.,]*", "#", cut.basis
    )
    assert same_case, (result["info"]["threshold_rule"], cut.basis)
    assert spark_count == result["anomaly_count"]
    assert abs(spark_count - native_count) <= 0.03 * native_count
    assert len(set(parity["planted"]) & set(parity["spark"]["ensemble_auto"]["flagged"])) >= 0.9 * PLANTED


@pytest.mark.parametrize("n_bins", [5, 10, 50])
def test_hbos_on_spark_equals_native_hbos(spark_session, n_bins):
    """Edges hit exactly (integer and constant columns) and tails: the same scores as natively."""
    from anomaly_detection.spark.jobs.members import hbos_scores

    rng = np.random.default_rng(n_bins)
    n = 3_000
    X = np.column_stack(
        [
            rng.normal(size=n),
            rng.integers(0, 7, n).astype(float),  # values on the bin edges
            np.full(n, 2.5),  # constant
            rng.exponential(size=n) ** 3,  # a long tail
            np.linspace(-1, 1, n),
        ]
    )
    ccols = [f"c{j}" for j in range(X.shape[1])]
    frame = spark_session.createDataFrame(
        pd.DataFrame(X, columns=ccols).assign(**{POS: np.arange(n)})[[POS, *ccols]]
    )
    scored, _ = hbos_scores(frame, ccols, [POS, *ccols], {"n_bins": n_bins}, n)
    spark = scored.select(POS, "_score").toPandas().sort_values(POS)["_score"].to_numpy()
    scored.unpersist()
    np.testing.assert_allclose(spark, histogram_scores(X, X, n_bins), rtol=1e-12, atol=1e-12)


def test_the_spark_algorithms_are_the_registry_entries_marked_spark():
    assert set(SPARK_ALGORITHMS) == {name for name, d in REGISTRY.items() if "spark" in d.engines}
