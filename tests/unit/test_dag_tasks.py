import pytest

from anomaly_detection.errors import ConfigError
from anomaly_detection.orchestration import dag_tasks


@pytest.fixture(autouse=True)
def _dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMALY_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("ANOMALY_REPORTS_DIR", str(tmp_path / "reports"))


def test_params_override_the_config_file_and_empty_fields_keep_it():
    cfg = dag_tasks.config_from_params(
        {"config": "demo.yaml", "contamination": 0.1, "mode": None, "algorithms": []}
    )
    assert cfg.modeling.contamination == 0.1
    assert cfg.processing.mode == "native"  # from demo.yaml
    assert cfg.modeling.algorithms == ["ensemble"]  # the default: an empty list keeps it
    assert cfg.output.runs_dir.endswith("runs")


def test_form_fields_beat_free_overrides():
    cfg = dag_tasks.config_from_params(
        {"overrides": {"modeling.contamination": 0.2, "source.retries": 7}, "contamination": 0.3}
    )
    assert cfg.modeling.contamination == 0.3 and cfg.source.retries == 7


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"config": "../secrets.yaml"}, "not a config file"),
        ({"config": "nope.yaml"}, "available: "),
        ({"hyperparameters": "medium"}, "modeling.hyperparameters"),
        ({"overrides": {"modeling.colour": 1}}, "modeling.colour"),
        ({"overrides": "x"}, "overrides"),
        ({"overrides": {"output.runs_dir": "/etc"}}, "set by the deployment"),
        ({"overrides": {"output": {"reports_dir": "/tmp/x"}}}, "set by the deployment"),
        ({"config": "/etc/passwd"}, "not a config file"),
    ],
)
def test_bad_conf_names_the_key(params, fragment):
    with pytest.raises(ConfigError, match=fragment):
        dag_tasks.config_from_params(params)


def test_choose_path_by_mode_and_rows():
    assert dag_tasks.choose_path({"mode": "spark"}, {"rows": 10})[0] == "spark"
    assert dag_tasks.choose_path({"mode": "native"}, {"rows": 10**9})[0] == "native"
    path, why = dag_tasks.choose_path(
        {"mode": "auto", "overrides": {"processing.auto_threshold_rows": 100}}, {"rows": 100}
    )
    assert path == "spark" and "100" in why
    assert (
        dag_tasks.choose_path(
            {"mode": "auto", "overrides": {"processing.auto_threshold_rows": 100}}, {"rows": 99}
        )[0]
        == "native"
    )


def test_resolve_writes_the_config_and_run_meta(tmp_path):
    out = dag_tasks.resolve(
        {"config": "demo.yaml", "rerun_of": "manual__first"}, "rerun__manual__2026-11-27T06:00:00+00:00"
    )
    assert (
        out["run_dir"].endswith("rerun__manual__2026-11-27T06-00-00_00-00")
        or "rerun__manual__2026" in out["run_dir"]
    )
    run_dir = tmp_path / "runs" / out["run_dir"].rsplit("/", 1)[1]
    assert (run_dir / "config.resolved.yaml").exists()
    assert '"rerun_of": "manual__first"' in (run_dir / "run_meta.json").read_text()


def test_a_config_symlinked_out_of_the_configs_folder_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "ok.yaml").write_text("name: ok\n")
    outside = tmp_path / "outside.yaml"
    outside.write_text("name: outside\n")
    (folder / "linked.yaml").symlink_to(outside)
    monkeypatch.setenv("ANOMALY_CONFIGS_DIR", str(folder))
    assert dag_tasks.config_from_params({"config": "ok.yaml"}).name == "ok"
    with pytest.raises(ConfigError, match="outside"):
        dag_tasks.config_from_params({"config": "linked.yaml"})


def test_the_deployment_decides_where_outputs_go(tmp_path):
    cfg = dag_tasks.config_from_params({"config": "demo.yaml"})
    assert cfg.output.runs_dir == str(tmp_path / "runs") and cfg.output.reports_dir == str(
        tmp_path / "reports"
    )
