from pathlib import Path

import pytest
import yaml

from anomaly_detection.config import (
    PipelineConfig,
    build_config,
    expand_dotted,
    load_config,
    parse_set_option,
    redact_url,
)
from anomaly_detection.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_default_yaml_documents_exactly_the_schema_defaults():
    documented = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    assert documented == PipelineConfig().model_dump(mode="json")


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_is_valid(name):
    assert isinstance(load_config(ROOT / "configs" / name), PipelineConfig)


def test_precedence_defaults_then_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("modeling:\n  contamination: 0.1\n  hyperparameters: complex\nsource:\n  retries: 1\n")
    cfg = load_config(path, {"modeling.contamination": 0.2})
    assert cfg.modeling.contamination == 0.2  # override beats file
    assert cfg.modeling.hyperparameters == "complex"  # file beats default
    assert cfg.source.retries == 1
    assert cfg.source.timeout_seconds == 30.0  # default kept


def test_nested_and_dotted_overrides_merge():
    assert expand_dotted({"a.b": 1, "a": {"c": 2}, "a.d.e": 3}) == {"a": {"b": 1, "c": 2, "d": {"e": 3}}}
    cfg = build_config({"source": {"pagination": {"type": "offset"}}}, {"source.pagination.page_size": 7})
    assert cfg.source.pagination.type == "offset" and cfg.source.pagination.page_size == 7


@pytest.mark.parametrize(
    "override, fragments",
    [
        ({"modeling.algoritms": ["kmeans"]}, ["modeling.algoritms", "unknown key", "algorithms"]),
        (
            {"modeling.hyperparameters": "medium"},
            ["modeling.hyperparameters", "'simple' or 'complex'", "medium"],
        ),
        ({"modeling.algorithms": ["svm"]}, ["modeling.algorithms.0", "isolation_forest", "svm"]),
        ({"modeling.contamination": 0.9}, ["modeling.contamination", "0.5"]),
        ({"evaluation.metric": "accuracy"}, ["evaluation.metric", "silhouette", "davies_bouldin"]),
        ({"processing.mode": "gpu"}, ["processing.mode", "native", "spark", "auto"]),
        ({"source.url": "ftp://example"}, ["source.url", "http"]),
        ({"source.auth.type": "bearer"}, ["source.auth", "token_env"]),
        ({"modeling.grids": {"kmeans": {"simple": {"foo": [1]}}}}, ["modeling.grids", "foo", "n_clusters"]),
        ({"report": {"colour": "red"}}, ["report.colour", "unknown key", "correlation_heatmap"]),
    ],
)
def test_bad_values_name_the_key_and_allowed_values(override, fragments):
    with pytest.raises(ConfigError) as info:
        build_config(override)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_partial_grid_override_keeps_other_levels():
    cfg = build_config({"modeling": {"grids": {"kmeans": {"simple": {"n_clusters": [4]}}}}})
    assert cfg.modeling.grid_for("kmeans") == {"n_clusters": [4]}
    assert cfg.modeling.grids["kmeans"]["complex"]["n_clusters"][0] == 2
    assert cfg.modeling.grids["dbscan"]["simple"]


def test_set_option_values_are_read_as_yaml():
    assert parse_set_option("modeling.contamination=0.1") == ("modeling.contamination", 0.1)
    assert parse_set_option("modeling.algorithms=[kmeans, dbscan]") == (
        "modeling.algorithms",
        ["kmeans", "dbscan"],
    )
    assert parse_set_option("source.url=http://x/?a=b") == ("source.url", "http://x/?a=b")
    with pytest.raises(ConfigError, match="key=value"):
        parse_set_option("no-equals-sign")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_secrets_are_redacted_from_saved_config():
    cfg = build_config(
        {
            "source": {
                "url": "https://user:pw@api.example.com/v1?api_key=SECRET1&q=ok",
                "headers": {"X-Api-Key": "SECRET2", "Accept": "json"},
                "params": {"token": "SECRET3", "limit": 5},
            }
        }
    )
    text = yaml.safe_dump(cfg.redacted())
    for secret in ("SECRET1", "SECRET2", "SECRET3", "pw@"):
        assert secret not in text
    assert "q=ok" in text and "Accept" in text and "limit" in text
    assert redact_url("http://h/p?sig=abc&x=1") == "http://h/p?sig=***&x=1"


def test_secret_values_cover_headers_params_query_userinfo_and_scheme_values():
    cfg = build_config(
        {
            "source": {
                "url": "https://user:PWD123@api.example.com/v1?api_key=SECRET1&q=ok",
                "headers": {"X-Api-Key": "SECRET2", "X-Custom": "Bearer SECRET4", "Accept": "json"},
                "params": {"token": "SECRET3", "limit": 5},
            }
        }
    )
    values = cfg.secret_values()
    for secret in ("SECRET1", "SECRET2", "SECRET3", "SECRET4", "Bearer SECRET4", "PWD123"):
        assert secret in values
    assert "json" not in values and "ok" not in values
    text = yaml.safe_dump(cfg.redacted())
    assert "SECRET4" not in text and "X-Custom" in text


def test_config_files_are_read_as_data_never_code(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['touch " + str(tmp_path / "pwned") + "']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(evil)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ConfigError):
        load_config(None, {"name": "__import__('os').system('true')", "modeling.contamination": "0.1 + 0.1"})
