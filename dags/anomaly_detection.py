"""
### Anomaly detection on any REST JSON API

Trigger with a config (the form below, or run conf JSON). The run reads the API, routes small
data to pandas / scikit-learn and large data to Spark, tunes the detectors, picks the best model,
writes one HTML report, and then **waits for a person** at `review`:

* **Approve** publishes the report to `reports/approved/`.
* **Reject** records the rejection; nothing is published.
* **Rerun with adjustments** starts a new run with this run's conf plus the adjustments you enter
  (contamination, algorithms, hyperparameters, mode, metric); the new run links back to this one.

Marking `review` *success* in the UI counts as approve, *failed* as reject. With no answer before
the response timeout (`ANOMALY_REVIEW_TIMEOUT_HOURS`, default 72) the run is rejected.

Every task logs what it did with counts; the run directory `runs/<run_id>/` keeps the raw API
responses, the resolved config (secrets redacted), results, `pipeline.log` and `report.html`.
The logic lives in `include/anomaly_detection`; this file only wires it.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.python import BranchPythonOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import BaseHook, Param, dag, task
from airflow.sdk.log import mask_secret
from review_gate import ReviewGateOperator  # plugins/

from anomaly_detection.orchestration import dag_tasks, review
from anomaly_detection.orchestration import params as form
from anomaly_detection.runs import SECRET_MASK, configs_dir, spark_jobs_dir
from anomaly_detection.spark.submit import base_conf

SECRET_MASK.forward_to(mask_secret)  # secrets the pipeline learns are masked in Airflow's task logs too

DAG_ID = "anomaly_detection"
SPARK_JOBS_DIR = spark_jobs_dir()
# Retry delay of the retried tasks, seconds (ANOMALY_RETRY_DELAY_SECONDS; tests lower it).
RETRY_DELAY = timedelta(seconds=float(os.environ.get("ANOMALY_RETRY_DELAY_SECONDS", "20")))
# Talks to the API: transient network/server trouble, so retry with a growing delay.
IO_RETRIES = {"retries": 2, "retry_delay": RETRY_DELAY, "retry_exponential_backoff": True}
# Deterministic computation on the run directory, idempotent (each rewrites its own outputs): a retry
# covers a worker that died (OOM kill, machine restart) mid-way.
COMPUTE_RETRIES = {"retries": 2, "retry_delay": RETRY_DELAY}
REVIEW_TIMEOUT = timedelta(hours=float(os.environ.get("ANOMALY_REVIEW_TIMEOUT_HOURS", "72")))
SPARK_CONF = base_conf()


SPARK_RUN_CONF = ("spark.driver.memory", "spark.executor.memory")


PARAMS = {
    "config": Param(
        dag_tasks.DEFAULT_CONFIG,
        type="string",
        title="Config file",
        description="A YAML file in configs/ (defaults < this file < the fields below).",
        examples=sorted(p.name for p in configs_dir().glob("*.yaml")),
    ),
    **{f.name: Param(None, **form.nullable_schema(f)) for f in form.TRIGGER_FIELDS},
    "overrides": Param(
        {},
        type="object",
        title="Other config overrides",
        description='Any config key, e.g. {"source.retries": 5}.',
    ),
    "rerun_of": Param(
        None, type=["null", "string"], title="Rerun of", description="Set by the review gate on reruns."
    ),
}

REVIEW_FORM = {
    f.name: Param(None, **form.nullable_schema(f)) for f in (*form.REVIEW_FIELDS, form.COMMENT_FIELD)
}


def _credentials(source):
    """Auth from an Airflow connection (source.auth.conn_id), else from environment variables."""
    from anomaly_detection.ingest.auth import connection_credentials, env_credentials

    auth = source.auth
    if not auth.conn_id:
        headers, params = env_credentials(source)
    else:
        conn = BaseHook.get_connection(auth.conn_id)
        headers, params = connection_credentials(
            auth, login=conn.login, password=conn.password, extra=conn.extra_dejson
        )
    for value in (*headers.values(), *params.values()):
        mask_secret(value)
    return headers, params


def _review_body(summary) -> str:
    return review.gate_body(summary or {})


@dag(
    dag_id=DAG_ID,
    schedule=None,
    catchup=False,
    params=PARAMS,
    tags=["anomaly-detection", "human-in-the-loop", "spark"],
    doc_md=__doc__,
    default_args={"owner": "data-platform", "retries": 0},
    max_active_runs=16,  # runs waiting at the review gate hold a slot: keep room for new ones
    render_template_as_native_obj=True,
    user_defined_filters={"review_body": _review_body},
)
def anomaly_detection():
    @task
    def resolve_config(params=None, run_id=None) -> dict:
        return dag_tasks.resolve(params, run_id)

    @task(**IO_RETRIES)
    def ingest(params=None, run_id=None) -> dict:
        return dag_tasks.ingest(params, run_id, credentials=_credentials)

    def _choose(params, ti, run_id):
        ingested = ti.xcom_pull(task_ids="ingest")
        path, why = dag_tasks.choose_path(params, ingested)
        print(f"{ingested['rows']:,} rows -> {path} path ({why})")
        return "preprocess" if path == "native" else "spark_preprocess"

    choose_path = BranchPythonOperator(task_id="choose_path", python_callable=_choose)

    @task(**COMPUTE_RETRIES)
    def preprocess(params=None, run_id=None) -> dict:
        return dag_tasks.preprocess(params, run_id)

    @task
    def list_algorithms(params=None) -> list[str]:
        return dag_tasks.algorithms(params)

    @task(map_index_template="{{ task.op_kwargs['algorithm'] }}", **COMPUTE_RETRIES)
    def detect(algorithm: str, params=None, run_id=None) -> dict:
        return dag_tasks.detect(params, run_id, algorithm)

    def spark_job(job: str) -> SparkSubmitOperator:
        return SparkSubmitOperator(
            task_id=f"spark_{job}",
            application=str(SPARK_JOBS_DIR / f"{job}.py"),
            application_args=[
                "--run-dir",
                "{{ ti.xcom_pull(task_ids='resolve_config')['run_dir'] }}",
                "--config",
                "{{ ti.xcom_pull(task_ids='resolve_config')['config_path'] }}",
            ],  # fmt: skip
            conn_id="spark_default",
            conf={
                **SPARK_CONF,
                # the run's config (spark.driver_memory / executor_memory), rendered per run
                **{
                    key: f"{{{{ ti.xcom_pull(task_ids='resolve_config')['spark_conf']['{key}'] }}}}"
                    for key in SPARK_RUN_CONF
                },
            },
            name=f"anomaly-{job}-{{{{ run_id }}}}",
            **COMPUTE_RETRIES,  # a job starts by clearing its stale outputs; only a finished one is marked done
        )

    spark_preprocess = spark_job("preprocess")
    spark_detect = spark_job("detect")

    @task(trigger_rule="none_failed_min_one_success", **COMPUTE_RETRIES)
    def evaluate_and_select(params=None, run_id=None, ti=None) -> dict:
        mode, _ = dag_tasks.choose_path(params, ti.xcom_pull(task_ids="ingest"))  # the branch taken
        return dag_tasks.select(params, run_id, mode=mode)

    @task(**COMPUTE_RETRIES)
    def build_report(params=None, run_id=None) -> dict:
        return dag_tasks.report(params, run_id)

    gate = ReviewGateOperator(
        task_id="review",
        subject="Review the anomaly report of {{ run_id }}",
        body="{{ ti.xcom_pull(task_ids='build_report') | review_body }}",
        options=list(review.OPTIONS),
        defaults=[review.TIMEOUT_DEFAULT],
        params=REVIEW_FORM,
        response_timeout=REVIEW_TIMEOUT,
    )

    @task.branch(trigger_rule="all_done")
    def apply_decision(params=None, run_id=None, ti=None, dag_run=None):
        states = ti.get_task_states(dag_id=DAG_ID, task_ids=["review"], run_ids=[run_id])
        gate_state = (states.get(run_id) or {}).get("review")
        gate_state = str(getattr(gate_state, "value", gate_state)) if gate_state else None
        response = ti.xcom_pull(task_ids="review") if gate_state == "success" else None
        outcome = dag_tasks.apply_review(dag_run.conf or {}, run_id, gate_state=gate_state, response=response)
        if outcome.get("rerun_conf"):
            ti.xcom_push(key="rerun_conf", value=outcome["rerun_conf"])
        print(f"review gate {gate_state}: decision {outcome['decision']} -> {outcome['next']}")
        return outcome["next"]

    @task
    def publish(params=None, run_id=None) -> dict:
        return dag_tasks.publish(params, run_id)

    rejected = EmptyOperator(task_id="rejected")
    trigger_rerun = TriggerDagRunOperator(
        task_id="trigger_rerun",
        trigger_dag_id=DAG_ID,
        trigger_run_id="rerun__{{ run_id }}",
        conf="{{ ti.xcom_pull(task_ids='apply_decision', key='rerun_conf') }}",
    )

    resolved = resolve_config()
    ingested = ingest()
    features = preprocess()
    algorithms = list_algorithms()
    detections = detect.expand(algorithm=algorithms)
    selected = evaluate_and_select()
    report = build_report()
    decision = apply_decision()

    resolved >> [ingested, algorithms]
    ingested >> choose_path
    choose_path >> features >> detections >> selected
    choose_path >> spark_preprocess >> spark_detect >> selected
    selected >> report >> gate >> decision >> [publish(), rejected, trigger_rerun]


anomaly_detection_dag = anomaly_detection()
