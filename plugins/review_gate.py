"""The review gate's operator: Airflow's HITLOperator, tolerant of partial form answers.

Airflow's HITLOperator fails the task when an answer's ``params_input`` does not name every form
field, which is what a script answering over REST usually sends (``{"comment": "ok"}``). A failed
gate counts as a rejection, so a well-meant partial answer would silently reject the run. This
operator fills the fields an answer leaves out with their defaults before Airflow validates it.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator


class ReviewGateOperator(HITLOperator):
    """``HITLOperator`` that accepts answers naming only some of the form's fields."""

    def execute_complete(self, context, event: dict[str, Any]) -> Any:
        if "error" not in event and self.params:
            given = event.get("params_input") or {}
            defaults = {key: self.params[key] for key in self.params}
            event = {**event, "params_input": {**defaults, **given}}
        return super().execute_complete(context, event)
