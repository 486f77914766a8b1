"""Typed pipeline configuration: defaults < config file < overrides.

Every option lives in one declarative place, the pydantic models below. An unknown key or a
bad value raises :class:`ConfigError` whose message names the key path and the allowed values.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from anomaly_detection.detect.detectors import REGISTRY
from anomaly_detection.errors import ConfigError

ALGORITHMS = tuple(REGISTRY)
#: The largest share of rows ``modeling.contamination`` may flag.
CONTAMINATION_MAX = 0.5

Algorithm = Literal[ALGORITHMS]  # type: ignore[valid-type]  # the registered detectors' names

#: Hyperparameter names each detector accepts in its grid (checked when the config loads).
GRID_PARAMS: dict[str, frozenset[str]] = {name: d.params for name, d in REGISTRY.items()}

DEFAULT_GRIDS: dict[str, dict[str, dict[str, list[Any]]]] = {
    name: copy.deepcopy(d.grids) for name, d in REGISTRY.items()
}

_SECRET_NAME = re.compile(
    r"(auth|token|secret|passw|api[-_]?key|apikey|cookie|session|signature|sig$|key$)", re.I
)
#: A value that carries its own credential scheme is secret whatever its key is called.
_SECRET_VALUE = re.compile(r"^\s*(bearer|basic|token|digest)\s+\S", re.I)
REDACTED = "***"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class AuthConfig(_Model):
    """How to authenticate. Secrets are read from environment variables at request time."""

    type: Literal["none", "bearer", "basic", "header", "query"] = "none"
    token_env: str | None = None
    username_env: str | None = None
    password_env: str | None = None
    header_name: str = "Authorization"
    param_name: str = "api_key"
    conn_id: str | None = None

    @model_validator(mode="after")
    def _needs_env(self) -> AuthConfig:
        if self.conn_id:
            return self
        if self.type in ("bearer", "header", "query") and not self.token_env:
            raise ValueError(
                f"auth type '{self.type}' needs token_env (the environment variable holding the token)"
            )
        if self.type == "basic" and not (self.username_env and self.password_env):
            raise ValueError("auth type 'basic' needs username_env and password_env")
        return self


class PaginationConfig(_Model):
    type: Literal["none", "offset", "page", "next_url", "link_header", "cursor"] = "none"
    page_size: int = Field(100, gt=0)
    limit_param: str = "limit"
    offset_param: str = "offset"
    page_param: str = "page"
    start_page: int = Field(1, ge=0)
    next_url_path: str = "next"
    #: Dotted path of the next page's cursor in the body (cursor pagination).
    cursor_path: str = "next_cursor"
    #: Query parameter that sends the cursor back (cursor pagination).
    cursor_param: str = "cursor"
    max_pages: int = Field(10_000, gt=0)


class SourceConfig(_Model):
    #: One URL, or a list of URLs of the same kind (one per region or month) read in one run.
    url: str | list[str] = "http://127.0.0.1:8765/records"
    method: Literal["GET", "POST"] = "GET"
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    records_path: str | None = None
    pagination: PaginationConfig = Field(default_factory=PaginationConfig)
    max_records: int | None = Field(None, gt=0)
    timeout_seconds: float = Field(30.0, gt=0)
    retries: int = Field(3, ge=0, le=20)
    backoff_seconds: float = Field(0.5, ge=0)
    max_backoff_seconds: float = Field(30.0, ge=0)
    concurrency: int = Field(4, ge=1, le=64)
    max_requests_per_second: float | None = Field(None, gt=0)
    #: A response body larger than this is refused while it streams (the part read is kept).
    max_response_bytes: int = Field(256 * 1024**2, ge=1024)
    #: Total time to receive one body (``timeout_seconds`` bounds each wait for data); past it: retried.
    max_response_seconds: float = Field(600.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list):
            if not value:
                raise ValueError("give at least one URL")
            for index, item in enumerate(value):
                _check_http_url(item, f"item {index}: ")
            return value
        _check_http_url(value)
        return value

    @property
    def urls(self) -> list[str]:
        """Every URL of the source, in order (one for a single string)."""
        return list(self.url) if isinstance(self.url, list) else [self.url]


def _check_http_url(value: str, where: str = "") -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{where}must be an http(s) URL with a host, got {redact_url(value)!r}")


ColumnRoleName = Literal["measure", "categorical", "boolean", "timestamp", "identifier", "text", "ignored"]


class ProcessingConfig(_Model):
    mode: Literal["native", "spark", "auto"] = "auto"
    auto_threshold_rows: int = Field(500_000, gt=0)
    #: Duplicate rows are always scored and counted; True fits each distinct feature row once, so
    #: a repeated anomaly cannot mask itself (its copies are not each other's neighbours).
    fit_on_distinct_rows: bool = True
    missing_values: Literal["kmeans", "median"] = "kmeans"
    imputation_clusters: int = Field(8, ge=1)
    scaling: Literal["minmax"] = "minmax"

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "drop_duplicates" in data:
            raise ValueError(
                "drop_duplicates was removed: duplicate rows are always scored and counted; "
                "use fit_on_distinct_rows (true: fit each distinct row once)"
            )
        return data

    include_features: list[str] = Field(default_factory=list)
    exclude_features: list[str] = Field(default_factory=list)
    #: Column name -> role, overriding the inferred one (see features/roles.py and docs/CONFIG.md).
    column_roles: dict[str, ColumnRoleName] = Field(default_factory=dict)
    max_list_length: int = Field(10, ge=0)
    max_depth: int = Field(32, ge=1)
    #: A response whose records flatten to more columns than this is refused.
    max_columns: int = Field(5_000, ge=1)
    #: Memory the native path may use, in MiB; None: half of this machine's physical memory.
    #: A larger dataset stops with advice to use Spark (``mode: native``) or goes to Spark (``auto``).
    native_memory_budget_mb: int | None = Field(None, gt=0)


class ValidationConfig(_Model):
    """Thresholds that stop a run whose report would mislead (the raw snapshot is kept)."""

    #: Fewer ingested rows than this stops the run.
    min_rows: int = Field(20, ge=2)
    #: A larger share of the feature cells missing (imputed) stops the run.
    max_missing_share: float = Field(0.8, gt=0, le=1)
    #: Fewer usable feature (measure) columns than this stops the run.
    min_features: int = Field(1, ge=1)


class SparkConfig(_Model):
    master: str = "local[*]"
    driver_memory: str = Field("3g", pattern=r"^[0-9]+[kmgtKMGT]$")
    executor_memory: str = Field("4g", pattern=r"^[0-9]+[kmgtKMGT]$")
    sample_size: int = Field(100_000, ge=1_000)


class ModelingConfig(_Model):
    algorithms: list[Algorithm] = Field(default_factory=lambda: ["ensemble"])
    hyperparameters: Literal["simple", "complex"] = "simple"
    #: Share of rows flagged (0 < c <= CONTAMINATION_MAX), or "auto": a cut read from each model's
    #: scores (anomaly_detection.detect.threshold).
    contamination: float | Literal["auto"] = "auto"
    random_state: int = 42
    fit_sample_size: int = Field(100_000, ge=100)
    dbscan_sample_size: int = Field(5_000, ge=50)
    grids: dict[Algorithm, dict[Literal["simple", "complex"], dict[str, list[Any]]]] = Field(
        default_factory=lambda: copy.deepcopy(DEFAULT_GRIDS)
    )

    @field_validator("contamination")
    @classmethod
    def _share_or_auto(cls, value: float | str) -> float | str:
        if value != "auto" and not 0 < float(value) <= CONTAMINATION_MAX:
            raise ValueError(
                f"contamination must be 'auto' or a share in (0, {CONTAMINATION_MAX}], got {value}"
            )
        return value

    @field_validator("algorithms")
    @classmethod
    def _non_empty_unique(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(f"choose at least one of {', '.join(ALGORITHMS)}")
        return list(dict.fromkeys(value))

    @field_validator("grids")
    @classmethod
    def _known_grid_params(cls, value: dict) -> dict:
        merged = copy.deepcopy(DEFAULT_GRIDS)
        for algorithm, levels in value.items():
            for level, grid in levels.items():
                unknown = set(grid) - GRID_PARAMS[algorithm]
                if unknown:
                    raise ValueError(
                        f"{algorithm}.{level}: unknown hyperparameter(s) {sorted(unknown)}; "
                        f"allowed: {sorted(GRID_PARAMS[algorithm])}"
                    )
                for name, values in grid.items():
                    if not values:
                        raise ValueError(f"{algorithm}.{level}.{name}: give at least one value")
                merged[algorithm][level] = grid
        return merged

    def grid_for(self, algorithm: str) -> dict[str, list[Any]]:
        return self.grids[algorithm][self.hyperparameters]


class EvaluationConfig(_Model):
    metric: Literal["silhouette", "davies_bouldin", "calinski_harabasz"] = "silhouette"
    #: metric: the best configuration by ``metric``; ensemble: the ``ensemble`` detector's result
    #: (added to the algorithms when missing), the metric still shown for every configuration.
    selection: Literal["metric", "ensemble"] = "ensemble"
    label_column: str | None = None
    silhouette_sample_size: int = Field(2_000, ge=100)


class ReportConfig(_Model):
    correlation_heatmap: bool = True
    top_anomalies: int = Field(50, ge=1, le=10_000)
    preview_rows: int = Field(10, ge=0, le=1_000)
    plot_sample_size: int = Field(20_000, ge=100)
    #: Earlier runs of the same source shown in the trend (from ``<runs_dir>/history.jsonl``).
    history_runs: int = Field(20, ge=0, le=1_000)

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "time_column" in data:
            raise ValueError("time_column moved: set time.column (the records' time field)")
        return data


class TimeConfig(_Model):
    """The time view: context features and the ``time_series`` detector, when records have a time column."""

    #: Column holding each record's time; None = the first column whose name and values say time.
    column: str | None = None
    #: Column naming each series (a sensor id, a station, a symbol); each is judged against its own
    #: history. None = the records form one series.
    series_key: str | None = None
    #: auto: with a time column, context features are built and ``time_series`` joins the ensemble;
    #: off: detection ignores time (the report still shows the time view).
    context: Literal["auto", "off"] = "auto"


class OutputConfig(_Model):
    runs_dir: str = "runs"
    reports_dir: str = "reports"


class PipelineConfig(_Model):
    """The whole configuration of one run."""

    name: str = "default"
    source: SourceConfig = Field(default_factory=SourceConfig)
    processing: ProcessingConfig = Field(default_factory=ProcessingConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    modeling: ModelingConfig = Field(default_factory=ModelingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    time: TimeConfig = Field(default_factory=TimeConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    def redacted(self) -> dict[str, Any]:
        """The config as plain data with every secret-looking value masked."""
        data = self.model_dump(mode="json")
        src = data["source"]
        src["url"] = (
            [redact_url(u) for u in src["url"]] if isinstance(src["url"], list) else redact_url(src["url"])
        )
        src["headers"] = {k: (REDACTED if looks_secret(k, v) else v) for k, v in src["headers"].items()}
        src["params"] = {k: (REDACTED if looks_secret(k, v) else v) for k, v in src["params"].items()}
        return data

    def secret_values(self) -> list[str]:
        """The secrets written in the config itself (secret-looking headers, parameters, URL query
        values and URL passwords), to be masked wherever text is logged or rendered."""
        source = self.source
        pairs = [*source.headers.items(), *source.params.items()]
        passwords = []
        for url in source.urls:
            parts = urlsplit(url)
            pairs += parse_qsl(parts.query, keep_blank_values=True)
            if parts.password:
                passwords.append(parts.password)
        found = [str(v) for k, v in pairs if looks_secret(k, v)] + passwords
        for value in list(found):
            scheme, _, rest = value.strip().partition(" ")
            if rest and _SECRET_VALUE.match(value):
                found.append(rest.strip())
        return sorted({v for v in found if len(v) >= 3}, key=len, reverse=True)


def looks_secret(key: str, value: Any) -> bool:
    """Whether a header, parameter or query item carries a secret (by its name or its value's scheme)."""
    return bool(_SECRET_NAME.search(str(key))) or (
        isinstance(value, str) and bool(_SECRET_VALUE.match(value))
    )


# --------------------------------------------------------------------------- loading


def redact_url(url: str) -> str:
    """Mask user info and secret-looking query parameters in a URL."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = urlencode(
        [
            (k, REDACTED if looks_secret(k, v) else v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``; nested mappings merge, everything else replaces."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), dict):
            result[key] = deep_merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def expand_dotted(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Turn ``{"modeling.contamination": 0.1}`` into ``{"modeling": {"contamination": 0.1}}``."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            value = expand_dotted(value)
        parts = str(key).split(".")
        target = nested
        for part in parts[:-1]:
            existing = target.get(part)
            if not isinstance(existing, dict):
                existing = target[part] = {}
            target = existing
        leaf = parts[-1]
        if isinstance(value, dict) and isinstance(target.get(leaf), dict):
            target[leaf] = deep_merge(target[leaf], value)
        else:
            target[leaf] = value
    return nested


def parse_set_option(option: str) -> tuple[str, Any]:
    """Parse one ``key.path=value`` command-line override; the value is read as YAML."""
    if "=" not in option:
        raise ConfigError(f"--set expects key=value, got {option!r}")
    key, raw = option.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects key=value, got {option!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping at the top level, got {type(data).__name__}"
        )
    return data


def build_config(*layers: Mapping[str, Any] | None) -> PipelineConfig:
    """Validate defaults merged with ``layers`` (each a nested or dotted mapping), later layers winning."""
    merged: dict[str, Any] = {}
    for layer in layers:
        if layer:
            merged = deep_merge(merged, expand_dotted(layer))
    try:
        return PipelineConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, merged)) from None


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> PipelineConfig:
    """Defaults < the YAML file at ``path`` < ``overrides``."""
    file_layer = read_config_file(path) if path else {}
    return build_config(file_layer, overrides)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = PipelineConfig
    for part in loc:
        if model is None or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model


def _value_at(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


def format_validation_error(exc: ValidationError, data: Mapping[str, Any]) -> str:
    problems = []
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = ".".join(str(p) for p in loc) or "<root>"
        if error["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1])
            allowed = ", ".join(parent.model_fields) if parent else "?"
            problems.append(f"{path}: unknown key (allowed here: {allowed})")
        else:
            message = error["msg"].removeprefix("Value error, ")
            value = _value_at(data, loc)
            shown = (
                f" (got {value!r})"
                if value is not None
                and not isinstance(value, (dict, list))
                and repr(value) not in message
                and "got " not in message  # the validator showed the value (a URL: redacted)
                else ""
            )
            problems.append(f"{path}: {message}{shown}")
    return "invalid config: " + "; ".join(problems)
