"""`clean_product_data`: clean one product-data file through the cleaning service's API.

Trigger it with a conf (or the form in Airflow's UI), e.g.
`{"input_path": "/data/X_train.csv", "options": {"lowercase": true}}` or
`{"source": "raw/X_test.csv", "output_format": "parquet"}`. The service is the
connection `cleaning_api` (host: the API's base URL, password: the API key). The task
waits deferred (in the triggerer, not in a worker slot) and pushes the job id, the
report, the result's URL and the MLflow run id (when the service tracks runs) to XCom.
The operator and its trigger are in the plugins folder: cleaning_service.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param
from cleaning_service import CONN_ID, CleaningJobOperator

with DAG(
    dag_id="clean_product_data",
    description="Clean a product-data file with the cleaning service (HTTP API)",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["cleaning", "rakuten"],
    # "{{ params.options }}" renders to the dict itself, and an absent value to None.
    render_template_as_native_obj=True,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    params={
        "input_path": Param(
            None,
            type=["null", "string"],
            description="A file on the Airflow worker to upload (.csv, .parquet, .jsonl)",
        ),
        "source": Param(
            None,
            type=["null", "string"],
            description="Or a file the service reads itself: a path under its DATA_DIR "
            "(or a key in its bucket), e.g. raw/X_test.csv",
        ),
        "options": Param(
            {},
            type="object",
            description='Cleaning options, e.g. {"lowercase": true, "drop_duplicates": true}',
        ),
        "output_format": Param("csv", enum=["csv", "parquet"], description="The result's format"),
    },
) as dag:
    CleaningJobOperator(
        task_id="clean",
        conn_id=CONN_ID,
        input_path="{{ params.input_path }}",
        source="{{ params.source }}",
        options="{{ params.options }}",
        output_format="{{ params.output_format }}",
    )
