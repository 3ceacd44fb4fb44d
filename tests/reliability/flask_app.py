"""A plain Flask app serving the data API blueprint (Airflow mounts it under /pluginsv2)."""

import airflow.configuration  # noqa: F401 - loaded in the api-server process, as here
from flask import Flask

from airflow_nx1_connect.web.blueprint import bp

app = Flask(__name__)
app.register_blueprint(bp)
