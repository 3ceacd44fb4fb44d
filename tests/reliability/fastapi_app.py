"""The plugin's FastAPI app mounted under /nx1, as the Airflow api-server mounts it."""

import airflow.configuration  # noqa: F401 - loaded in the api-server process, as here
from fastapi import FastAPI

from airflow_nx1_connect.web.api import app as data_api_app

app = FastAPI()
app.mount("/nx1", data_api_app)
