"""The run's form fields, defined once: the trigger form, the review gate's form, and the config key
each field sets.

A field's JSON schema comes from the config model's type (a ``Literal`` gives its choices, a list of
``Literal`` a multiple choice), so the forms offer exactly what the config accepts. The DAG wraps
these schemas in Airflow ``Param`` objects; this module imports no Airflow.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from anomaly_detection.config import CONTAMINATION_MAX, PipelineConfig


@dataclass(frozen=True)
class FormField:
    """One form field.

    Attributes
    ----------
    name : str
        The field's name in the run conf and the gate's form.
    key : str
        The dotted config key the field sets.
    title, description : str
        What the form shows.
    schema : dict
        JSON schema of the value where the config's type alone cannot say it (bounds set by a
        validator); else derived from the type.
    """

    name: str
    key: str
    title: str
    description: str
    schema: Mapping[str, Any] = field(default_factory=dict)


#: Every field of the trigger form that sets a config key (an empty field keeps the config file's value).
TRIGGER_FIELDS = (
    FormField(
        "url", "source.url", "API URL", "Any http(s) URL returning JSON; empty keeps the config file's."
    ),
    FormField(
        "mode",
        "processing.mode",
        "Processing mode",
        "native (pandas/scikit-learn), spark, or auto (by row count). Empty keeps the config's.",
    ),
    FormField("algorithms", "modeling.algorithms", "Algorithms", "Empty keeps the config's."),
    FormField(
        "hyperparameters",
        "modeling.hyperparameters",
        "Hyperparameter grid",
        "simple (narrow, fast) or complex (wide).",
    ),
    FormField("metric", "evaluation.metric", "Selection metric", "Picks the best model."),
    FormField(
        "contamination",
        "modeling.contamination",
        "Contamination",
        f"Share of rows labelled anomalous, in (0, {CONTAMINATION_MAX}].",
        {"type": "number", "exclusiveMinimum": 0, "maximum": CONTAMINATION_MAX},
    ),
    FormField(
        "label_column",
        "evaluation.label_column",
        "Label column",
        "A 0/1 ground-truth column: adds ROC-AUC, PR-AUC, precision, recall, F1.",
    ),
)

#: The fields a reviewer may adjust for a rerun (same names and keys as on the trigger form).
REVIEW_FIELDS = tuple(
    f
    for f in TRIGGER_FIELDS
    if f.name in ("contamination", "algorithms", "hyperparameters", "mode", "metric")
)

#: The gate's free-text field (kept in decision.json and the report; sets no config key).
COMMENT_FIELD = FormField(
    "comment",
    "",
    "Comment",
    "Optional: why you decided so; kept in decision.json and the report.",
    {"type": "string"},
)


def config_type(key: str) -> Any:
    """The type annotation of a dotted config key, e.g. ``modeling.algorithms`` -> ``list[Algorithm]``."""
    model: type[BaseModel] = PipelineConfig
    annotation: Any = None
    for part in key.split("."):
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return annotation


def _scalar_schema(annotation: Any) -> dict[str, Any]:
    if typing.get_origin(annotation) is Literal:
        return {"type": "string", "enum": list(typing.get_args(annotation))}
    if annotation in (int, float):
        return {"type": "number"}
    return {"type": "string"}


def value_schema(form_field: FormField) -> dict[str, Any]:
    """JSON schema of a field's value (without null), from the field or the config's type."""
    if form_field.schema:
        return dict(form_field.schema)
    annotation = config_type(form_field.key)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # X | None
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is list:
        return {"type": "array", "items": _scalar_schema(typing.get_args(annotation)[0])}
    return _scalar_schema(annotation)


def nullable_schema(form_field: FormField) -> dict[str, Any]:
    """A field's schema that also accepts null (an empty field), as Airflow ``Param`` keyword arguments."""
    schema = value_schema(form_field)
    schema["type"] = ["null", schema["type"]]
    if "enum" in schema:
        schema["enum"] = [None, *schema["enum"]]
    if form_field.name == "algorithms":
        choices = schema["items"]["enum"]
        return {
            **schema,
            "title": form_field.title,
            "description": f"Any of {', '.join(choices)}. {form_field.description}",
        }
    return {**schema, "title": form_field.title, "description": form_field.description}


def form_overrides(values: Mapping[str, Any] | None, fields: tuple[FormField, ...]) -> dict[str, Any]:
    """The config overrides of the filled-in ``fields`` among ``values`` (None, "" and [] are empty)."""
    values = values or {}
    return {f.key: values[f.name] for f in fields if values.get(f.name) not in (None, "", [])}
