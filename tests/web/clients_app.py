"""Both mounts in one ASGI app, as in the Airflow api-server: the FastAPI app at `/nx1` and
the Flask blueprint under `/pluginsv2` (a WSGI app), for `test_clients`' uvicorn server."""

import airflow.configuration  # noqa: F401 - loaded in the api-server process, as here
from a2wsgi import WSGIMiddleware
from fastapi import FastAPI
from flask import Flask

from airflow_nx1_connect.web.api import app as data_api_app
from airflow_nx1_connect.web.blueprint import bp

flask_app = Flask(__name__)
flask_app.register_blueprint(bp)

app = FastAPI()
app.mount("/nx1", data_api_app)
app.mount("/pluginsv2", WSGIMiddleware(flask_app))
