"""Stage warnings, validation thresholds, a list of source URLs and the report's title."""

import pytest

from anomaly_detection.config import ValidationConfig, build_config
from anomaly_detection.errors import ConfigError, DataError
from anomaly_detection.ingest.sources import SOURCE_COLUMN, source_raw_dir
from anomaly_detection.pipeline import checks
from anomaly_detection.report.sections import source_title


def summary(**changes):
    base = {
        "rows_before": 100,
        "rows_after": 100,
        "features": ["a", "b"],
        "missing_per_column": {"a": 0, "b": 60, "c": 100},
        "columns_dropped": {"c": "all values missing", "id": "looks like an identifier"},
        "duplicates": 0,
        "imputed_values": 60,
    }
    return {**base, **changes}


def test_ingest_warnings_are_kept_and_an_auto_detected_shape_is_noted():
    info = {"warnings": ["page 2 is identical to page 1"], "records_shape": "data: rows of arrays"}
    assert checks.ingest_warnings(info, records_path=None) == [
        "ingest: page 2 is identical to page 1",
        "records auto-detected: data: rows of arrays (set source.records_path to choose)",
    ]
    assert checks.ingest_warnings(info, records_path="data") == ["ingest: page 2 is identical to page 1"]
    assert checks.ingest_warnings({}, records_path=None) == []


def test_summary_warnings_name_dropped_columns_heavy_imputation_and_duplicates():
    warnings = checks.summary_warnings(summary(duplicates=11))
    assert warnings == [
        "2 column(s) not used as features: c (all values missing); id (looks like an identifier)",
        "column b: 60% of its values missing, imputed",
        "11% of the rows are duplicates (11 of 100), each one scored",
    ]


def test_no_summary_warning_at_or_below_the_thresholds():
    quiet = summary(columns_dropped={}, missing_per_column={"b": 50}, duplicates=10)
    assert checks.summary_warnings(quiet) == []


def test_stage_warnings_keep_pipeline_order():
    warnings = checks.stage_warnings(
        {"warnings": ["stop"]}, summary(columns_dropped={}), ["best model: flag"], records_path="x"
    )
    assert warnings == ["ingest: stop", "column b: 60% of its values missing, imputed", "best model: flag"]


def test_a_spark_run_names_the_configured_algorithms_it_skipped():
    spark = ("ensemble", "isolation_forest", "hbos", "ecod", "kmeans", "bisecting_kmeans")
    assert checks.spark_skipped_warnings(["ensemble", "isolation_forest", "kmeans"], spark) == []
    (warning,) = checks.spark_skipped_warnings(
        ["ensemble", "isolation_forest", "kmeans", "dbscan", "knn"], spark
    )
    assert warning.startswith("not available on the Spark path, skipped: dbscan, knn (Spark runs ensemble,")


def test_validation_names_the_threshold_and_the_value():
    validation = ValidationConfig()
    checks.validate_rows(20, validation)
    with pytest.raises(DataError, match=r"^validation.min_rows: 19 row\(s\) ingested, fewer than 20$"):
        checks.validate_rows(19, validation)
    checks.validate_summary(summary(), validation)  # 30 % of the cells missing
    with pytest.raises(DataError, match=r"^validation.max_missing_share: 85.0% of the feature cells missing"):
        checks.validate_summary(summary(imputed_values=170), validation)
    with pytest.raises(
        DataError, match=r"^validation.min_features: 2 usable feature column\(s\), fewer than 3$"
    ):
        checks.validate_summary(summary(), ValidationConfig(min_features=3))


def test_source_url_may_be_a_non_empty_list_of_http_urls():
    config = build_config({"source": {"url": ["https://a.example/eu", "http://a.example/us?key=k3y"]}})
    assert config.source.urls == ["https://a.example/eu", "http://a.example/us?key=k3y"]
    assert config.redacted()["source"]["url"] == ["https://a.example/eu", "http://a.example/us?key=***"]
    assert "k3y" in config.secret_values()
    assert build_config({"source": {"url": "https://one.example/x"}}).source.urls == ["https://one.example/x"]
    with pytest.raises(ConfigError, match="give at least one URL"):
        build_config({"source": {"url": []}})
    with pytest.raises(ConfigError, match="item 1: must be an http"):
        build_config({"source": {"url": ["https://a.example/eu", "ftp://a.example/us"]}})


def test_each_url_has_its_own_raw_snapshot_and_one_url_keeps_raw(tmp_path):
    assert source_raw_dir(tmp_path, 0, 1) == tmp_path
    assert [source_raw_dir(tmp_path, i, 2).name for i in range(2)] == ["source-1", "source-2"]


def test_the_source_column_is_never_a_feature():
    import pandas as pd

    from anomaly_detection.features.preprocess import select_features

    table = pd.DataFrame({SOURCE_COLUMN: [1.0, 2.0, 3.0], "v": [1.0, 5.0, 2.0]})
    plan, _, dropped, _ = select_features(table, build_config({}).processing)
    assert plan.names == ["v"] and dropped == {SOURCE_COLUMN: "source of the record"}


@pytest.mark.parametrize(
    ("name", "url", "title"),
    [
        ("quakes", "https://api.example.com/v1/events?key=***", "quakes"),
        ("default", "https://api.example.com/v1/events?key=***", "api.example.com/v1/events"),
        ("default", "https://a.example/eu https://a.example/us", "a.example/eu"),
        (None, "", ""),
    ],
)
def test_the_report_title_names_the_source(name, url, title):
    assert source_title(name, url) == title


def test_a_bad_source_url_is_shown_redacted():
    with pytest.raises(ConfigError) as error:
        build_config({"source": {"url": "ftp://x.example/y?api_key=s3cr3t"}})
    assert "s3cr3t" not in str(error.value) and "api_key=***" in str(error.value)
