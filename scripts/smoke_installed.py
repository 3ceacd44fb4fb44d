"""Smoke suite of an installed airflow-nx1-connect: what a user gets from `pip install`.

Run by `scripts/test-pythons.sh` with the Python of a fresh venv that has the wheel (and its
dependencies as pip resolved them, no lock file) installed, from a work folder outside the
checkout, so only the installed package can be imported. Standard library only.

    python smoke_installed.py --examples CHECKOUT/dags_examples --work DIR [--openlineage]

In a fresh AIRFLOW_HOME: migrates Airflow and the snapshot store, runs both example DAGs with
`airflow dags test` on their demo SQLite sources, uses `nx1-connect` (apis, snapshots, keys),
starts a real `airflow api-server` and reads the data API on both mounts (`/nx1` and
`/pluginsv2`; JSON, CSV, Arrow, Parquet; 401 without a key), logs in and opens the admin view,
and calls the control plane with an Airflow token. With `--openlineage` (the wheel installed
with its `[openlineage]` extra) the example runs must write START and COMPLETE events to the
OpenLineage file transport; without it, OpenLineage must not be installed at all.

Prints one line per check and `N passed, M failed` last; exits 1 when a check failed.
"""

from __future__ import annotations

import argparse
import base64
import http.cookiejar
import importlib.metadata
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
EXAMPLE_DAGS = {
    "retail_weekly_top_product": ["weekly_top_product"],
    "bank_compliance": ["compliance_metrics", "fraud_alerts"],
}
ADMIN = ("admin", secrets.token_urlsafe(12))
RESULTS: list[tuple[str, bool, str]] = []


def check(name: str, fn: Callable[[], Any]) -> Any:
    """Run one check; record and print its outcome (a failure's reason on the same line)."""
    started = time.monotonic()
    try:
        value = fn()
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}".strip().replace("\n", " | ")[:1500]
        RESULTS.append((name, False, detail))
        print(f"[smoke] FAILED {name}: {detail}", flush=True)
        if os.environ.get("NX1_SMOKE_TRACEBACK"):
            traceback.print_exc()
        return None
    RESULTS.append((name, True, ""))
    print(f"[smoke] ok     {name} ({time.monotonic() - started:.1f} s)", flush=True)
    return value


def require(condition: Any, message: str) -> None:
    """Fail the current check with `message` unless `condition` holds."""
    if not condition:
        raise AssertionError(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(env: dict[str, str], *argv: str, timeout: float = 300) -> str:
    """Run an installed command; its stdout; fail with its output's tail unless it exits 0."""
    done = subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {done.returncode}: "
            f"{done.stdout[-1500:]} {done.stderr[-2500:]}"
        )
    return done.stdout


class Http:
    """A tiny client: a cookie jar (for the admin view's login) and no redirects followed."""

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), self._NoRedirect()
        )

    def request(
        self,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
        method: str | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(
            self.base + path, data=data, headers=headers or {}, method=method
        )
        try:
            with self.opener.open(req, timeout=60) as resp:
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def environment(work: Path, dags: Path, port: int, events: Path) -> dict[str, str]:
    """The deployment's settings (as `make demo` sets them), nothing from the caller's Airflow."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    base = f"http://127.0.0.1:{port}"
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "AIRFLOW_HOME": str(work / "home"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
            ),
            "AIRFLOW__FAB__SESSION_BACKEND": "securecookie",
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": base,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN": f"sqlite:///{work / 'home' / 'nx1.db'}",
            "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
                {"type": "file", "log_file_path": str(events), "append": True}
            ),
        }
    )
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=Path, required=True, help="the dags_examples folder")
    parser.add_argument("--work", type=Path, required=True, help="an empty work folder")
    parser.add_argument("--openlineage", action="store_true", help="the [openlineage] extra")
    args = parser.parse_args(argv)
    work: Path = args.work.resolve()
    (work / "home").mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # never the checkout: only the installed package is importable
    print(f"[smoke] Python {sys.version.split()[0]} at {sys.executable}", flush=True)

    def installed() -> None:
        import airflow_nx1_connect

        where = Path(airflow_nx1_connect.__file__).resolve()
        assert Path(sys.prefix).resolve() in where.parents, f"imported from {where}"
        version = importlib.metadata.version("airflow-nx1-connect")
        airflow = importlib.metadata.version("apache-airflow")
        print(f"[smoke]        airflow-nx1-connect {version}, apache-airflow {airflow}")

    check("the wheel is what is imported (not the checkout)", installed)

    def openlineage_presence() -> None:
        try:
            dist = importlib.metadata.version("apache-airflow-providers-openlineage")
        except importlib.metadata.PackageNotFoundError:
            dist = None
        if args.openlineage:
            assert dist, "the [openlineage] extra did not install the OpenLineage provider"
        else:
            assert dist is None, f"OpenLineage provider {dist} installed without the extra"

    check(
        "OpenLineage provider " + ("installed by the extra" if args.openlineage else "absent"),
        openlineage_presence,
    )

    dags = work / "dags"
    shutil.copytree(args.examples, dags, ignore=shutil.ignore_patterns("__pycache__"))
    events = work / "openlineage.jsonl"
    port = free_port()
    env = environment(work, dags, port, events)

    def sources() -> None:
        sys.path.insert(0, str(dags))
        import demo_data  # the examples' own demo-source builder

        paths = demo_data.create_demo_databases(work / "sources")
        env.update(demo_data.connection_env(paths))

    check("demo sources", sources)
    check("airflow db migrate", lambda: run(env, "airflow", "db", "migrate"))
    check("nx1-connect db migrate", lambda: run(env, "nx1-connect", "db", "migrate"))
    check(
        "airflow users create (Admin)",
        lambda: run(
            env, "airflow", "users", "create", "-u", ADMIN[0], "-p", ADMIN[1], "-r", "Admin",
            "-f", "Smoke", "-l", "Admin", "-e", "admin@example.com",
        ),
    )  # fmt: skip
    for dag_id in EXAMPLE_DAGS:

        def dags_test(dag_id: str = dag_id) -> str:
            return run(env, "airflow", "dags", "test", dag_id)

        check(f"airflow dags test {dag_id}", dags_test)

    def apis() -> dict[str, Any]:
        listed = {
            a["name"]: a for a in json.loads(run(env, "nx1-connect", "apis", "list", "--json"))
        }
        expected = {n for names in EXAMPLE_DAGS.values() for n in names}
        assert set(listed) == expected, sorted(listed)
        for name in expected:
            snaps = json.loads(run(env, "nx1-connect", "snapshots", "list", name, "--json"))
            assert len(snaps) == 1 and snaps[0]["row_count"] > 0, snaps
        return listed

    check("nx1-connect apis list / snapshots list", apis)

    api = "weekly_top_product"

    def key() -> str:
        made = run(env, "nx1-connect", "keys", "create", "--data-api", api, "--days", "1")
        secret = made.strip()
        assert secret.startswith("nx1_") and "\n" not in secret
        keys = json.loads(run(env, "nx1-connect", "keys", "list", "--data-api", api, "--json"))
        assert len(keys) == 1 and secret not in json.dumps(keys)
        return secret

    secret = check("nx1-connect keys create / keys list", key) or ""

    if args.openlineage:

        def lineage() -> None:
            assert events.exists(), "no OpenLineage event was written"
            seen: dict[str, list[dict[str, Any]]] = {}
            for line in events.read_text().splitlines():
                event = json.loads(line)
                seen.setdefault(event["job"]["name"], []).append(event)
            run_events = seen[f"retail_weekly_top_product.{api}"]
            assert [e["eventType"] for e in run_events] == ["START", "COMPLETE"], run_events
            (output,) = run_events[-1]["outputs"]
            assert (output["namespace"], output["name"]) == ("nx1", api)
            assert [f["name"] for f in output["facets"]["schema"]["fields"]]
            assert output["outputFacets"]["outputStatistics"]["rowCount"] > 0

        check("OpenLineage START and COMPLETE with the nx1 output", lineage)
    else:
        check(
            "no OpenLineage event without the provider",
            lambda: require(not events.exists(), f"{events} was written"),
        )

    server = serve(env, port, work)
    try:
        if server is not None:
            http_checks(f"http://127.0.0.1:{port}", api, secret)
    finally:
        if server is not None:
            stop(server)

    failed = [name for name, ok, _ in RESULTS if not ok]
    print(f"[smoke] {len(RESULTS) - len(failed)} passed, {len(failed)} failed", flush=True)
    return 1 if failed else 0


def serve(env: dict[str, str], port: int, work: Path) -> subprocess.Popen[bytes] | None:
    """Start `airflow api-server`; None (a failed check) if it is not healthy in 180 s."""
    log = work / "api-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def healthy() -> bool:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"api-server exited: {log.read_text()[-3000:]}")
            try:
                status, _, _ = Http(f"http://127.0.0.1:{port}").request("/api/v2/monitor/health")
                if status == 200:
                    return True
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"api-server not healthy in 180 s: {log.read_text()[-3000:]}")
            time.sleep(1)

    if not check("airflow api-server is up (/api/v2/monitor/health 200)", healthy):
        stop(proc)
        return None
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    """TERM the api-server's process group, KILL what is left after 20 s."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            os.killpg(proc.pid, signal.SIGKILL)  # children the leader left behind
        except (subprocess.TimeoutExpired, ProcessLookupError):
            continue
        return


def http_checks(base: str, api: str, secret: str) -> None:
    client = Http(base)
    auth = {"Authorization": f"Bearer {secret}"}
    rows: dict[str, Any] = {}

    for mount in ("/nx1/api/v1", "/pluginsv2/nx1/api/v1"):

        def latest(mount: str = mount) -> None:
            status, headers, body = client.request(f"{mount}/data-apis/{api}/latest", headers=auth)
            assert status == 200, (status, body[:500])
            assert headers["content-type"].startswith("application/json")
            doc = json.loads(body)
            assert doc["data_api"] == api and doc["data"]["row_count"] > 0, doc
            rows[mount] = doc["data"]["data"]

        check(f"GET {mount}/data-apis/{api}/latest (JSON, key)", latest)

        def formats(mount: str = mount) -> None:
            for fmt, media, magic in (
                ("csv", "text/csv", b"product"),
                ("arrow", "application/vnd.apache.arrow.stream", b""),
                ("parquet", "application/vnd.apache.parquet", b"PAR1"),
            ):
                path = f"{mount}/data-apis/{api}/latest?format={fmt}"
                status, headers, body = client.request(path, headers=auth)
                assert status == 200, (fmt, status, body[:300])
                assert headers["content-type"].startswith(media), (fmt, headers["content-type"])
                assert body.startswith(magic) and len(body) > 8, (fmt, body[:40])

        check(f"GET {mount}/.../latest as CSV, Arrow, Parquet", formats)

        def refused(mount: str = mount) -> None:
            status, headers, _ = client.request(f"{mount}/data-apis/{api}/latest")
            assert status == 401, status
            assert headers["content-type"].startswith("application/problem+json")
            assert headers.get("www-authenticate", "").startswith("Bearer"), headers

        check(f"GET {mount}/.../latest without a key: 401 problem+json", refused)

    check(
        "both mounts serve the same rows",
        lambda: require(rows["/nx1/api/v1"] == rows["/pluginsv2/nx1/api/v1"], str(rows)[:500]),
    )

    def admin_view() -> None:
        status, _, page = client.request("/auth/login/")
        assert status == 200, status
        match = re.search(rb'name="csrf_token"[^>]*value="([^"]+)"', page)
        assert match, "no csrf_token on /auth/login/"
        form = urllib.parse.urlencode(
            {"username": ADMIN[0], "password": ADMIN[1], "csrf_token": match.group(1).decode()}
        ).encode()
        status, _, _ = client.request(
            "/auth/login/",
            data=form,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert status in (200, 302), status
        status, _, page = client.request("/pluginsv2/nx1connect/")
        assert status == 200, (status, page[:300])
        assert api.encode() in page and b"compliance_metrics" in page

    check("admin view /pluginsv2/nx1connect/ after logging in", admin_view)

    def control_plane() -> None:
        body = json.dumps({"username": ADMIN[0], "password": ADMIN[1]}).encode()
        status, _, answer = client.request(
            "/auth/token", data=body, headers={"Content-Type": "application/json"}
        )
        assert status in (200, 201), (status, answer[:300])
        token = json.loads(answer)["access_token"]
        status, _, answer = client.request(
            "/nx1/api/v1/admin/data-apis", headers={"Authorization": f"Bearer {token}"}
        )
        assert status == 200, (status, answer[:300])
        names = {a["name"] for a in json.loads(answer)}
        assert {api, "compliance_metrics", "fraud_alerts"} <= names, names

    check("control plane GET /nx1/api/v1/admin/data-apis (Airflow token)", control_plane)


if __name__ == "__main__":
    sys.exit(main())
