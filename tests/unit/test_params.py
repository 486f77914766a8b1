"""The form fields are defined once and their choices come from the config's types."""

import typing

import pytest

from anomaly_detection.config import ALGORITHMS, CONTAMINATION_MAX, AuthConfig, build_config
from anomaly_detection.errors import ConfigError
from anomaly_detection.ingest.auth import connection_credentials
from anomaly_detection.orchestration import params as form
from anomaly_detection.orchestration.dag_tasks import config_from_params
from anomaly_detection.orchestration.review import adjustments_from_form, rerun_conf


def field(name):
    return next(f for f in form.TRIGGER_FIELDS if f.name == name)


def test_choices_come_from_the_config_types():
    assert form.value_schema(field("algorithms"))["items"]["enum"] == list(ALGORITHMS)
    mode_choices = typing.get_args(form.config_type("processing.mode"))
    assert form.value_schema(field("mode"))["enum"] == list(mode_choices) == ["native", "spark", "auto"]
    assert form.value_schema(field("metric"))["enum"] == [
        "silhouette",
        "davies_bouldin",
        "calinski_harabasz",
    ]
    assert form.value_schema(field("url")) == {"type": "string"}
    assert form.value_schema(field("label_column")) == {"type": "string"}  # str | None
    assert form.value_schema(field("contamination"))["maximum"] == CONTAMINATION_MAX


def test_every_choice_offered_is_accepted_by_the_config():
    for f in form.TRIGGER_FIELDS:
        schema = form.value_schema(f)
        choices = schema.get("enum") or schema.get("items", {}).get("enum") or []
        for choice in choices:
            value = [choice] if schema["type"] == "array" else choice
            build_config({f.key: value})


def test_nullable_schema_is_an_airflow_param_with_an_empty_choice():
    schema = form.nullable_schema(field("hyperparameters"))
    assert schema["type"] == ["null", "string"] and schema["enum"] == [None, "simple", "complex"]
    assert schema["title"] == "Hyperparameter grid" and schema["description"]


def test_the_review_fields_are_trigger_fields_and_map_to_the_same_keys():
    assert {f.name for f in form.REVIEW_FIELDS} <= {f.name for f in form.TRIGGER_FIELDS}
    assert adjustments_from_form({"metric": "davies_bouldin", "mode": "", "comment": "x"}) == {
        "evaluation.metric": "davies_bouldin"
    }
    conf = rerun_conf({"metric": "silhouette"}, {"evaluation.metric": "davies_bouldin"}, rerun_of="r1")
    assert conf["metric"] == "davies_bouldin" and conf["overrides"] == {"evaluation.metric": "davies_bouldin"}


def test_form_overrides_skip_empty_fields():
    values = {"url": "http://x/api", "mode": None, "algorithms": [], "metric": "", "contamination": 0.1}
    assert form.form_overrides(values, form.TRIGGER_FIELDS) == {
        "source.url": "http://x/api",
        "modeling.contamination": 0.1,
    }


def test_a_bad_form_value_names_the_key():
    with pytest.raises(ConfigError, match="modeling.hyperparameters"):
        config_from_params({"config": "demo.yaml", "hyperparameters": "huge"})


@pytest.mark.parametrize(
    ("kind", "login", "expected"),
    [
        ("bearer", None, ({"Authorization": "Bearer pw"}, {})),
        ("header", None, ({"Authorization": "pw"}, {})),
        ("query", None, ({}, {"api_key": "pw"})),
        ("basic", "ann", ({"Authorization": "Basic YW5uOnB3"}, {})),
        ("none", "ann", ({"Authorization": "Basic YW5uOnB3"}, {})),
        ("none", None, ({"Authorization": "Bearer pw"}, {})),
    ],
)
def test_connection_credentials_follow_the_auth_type(kind, login, expected):
    auth = AuthConfig(type=kind, param_name="api_key", conn_id="api")
    assert connection_credentials(auth, login=login, password="pw", extra=None) == expected


def test_a_connection_token_may_sit_in_extra():
    auth = AuthConfig(type="bearer", conn_id="api")
    assert connection_credentials(auth, login=None, password=None, extra={"token": "t0k"}) == (
        {"Authorization": "Bearer t0k"},
        {},
    )
