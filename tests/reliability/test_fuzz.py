"""6. Bad input: a bounded fuzz run over every query parameter and header of the REST API.

Hypothesis sends arbitrary values for start, limit, columns, format, unknown and key-like
parameters, and for Accept, Authorization, X-API-Key and If-None-Match, to both real
server processes. No answer may be a 5xx, and no body may carry a secret, a key hash or a
stack trace.
"""

from __future__ import annotations

import hashlib

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow  # two real server processes per store

PARAM_NAMES = ["start", "limit", "columns", "format", "api_key", "token", "x", "START"]
PATHS = [
    "alpha",
    "alpha/latest",
    "alpha/snapshots",
    "alpha/snapshots/{sid}",
    "beta/latest",
    "zz/latest",
]
text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
# Header values as a client can send them (no leading/trailing white space).
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80).map(
    str.strip
)
values = st.one_of(
    text,
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(
        ["json", "csv", "ndjson", "id,label", "label", "", "0", "-1", "10001", "1e3", "id,id"]
    ),
)


def _assert_clean(served, r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    body = r.text
    assert "Traceback" not in body
    for secret in served.secrets_seen:
        assert secret not in body
        assert hashlib.sha256(secret.encode()).hexdigest() not in body
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/problem+json")


def test_fuzzed_requests_never_get_a_5xx_or_leak(served):
    good = served.keys["alpha"].secret
    auth = st.one_of(
        st.just(f"Bearer {good}"),
        header_text,
        st.just("Bearer"),
        st.just(f"Basic {good}"),
        st.just(f"Bearer {good}x"),
    )

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        path=st.sampled_from(PATHS),
        params=st.lists(st.tuples(st.sampled_from(PARAM_NAMES), values), max_size=5),
        authorization=st.one_of(st.none(), auth),
        api_key=st.one_of(st.none(), st.just(good), header_text),
        accept=st.one_of(
            st.none(),
            st.sampled_from(["text/csv", "application/x-ndjson", "*/*", "application/xml"]),
            header_text,
        ),
        etag=st.one_of(st.none(), header_text),
        server_index=st.integers(0, 1),
    )
    def run(path, params, authorization, api_key, accept, etag, server_index):
        headers = {}
        for name, value in (
            ("Authorization", authorization),
            ("X-API-Key", api_key),
            ("Accept", accept),
            ("If-None-Match", etag),
        ):
            if value is not None:
                headers[name] = value
        server = served.servers[server_index]
        url = f"{server.base}/data-apis/{path.format(sid=served.snapshot_ids['alpha'])}"
        r = httpx.get(url, params=params, headers=headers, timeout=30)
        _assert_clean(served, r)

    run()
    for server in served.servers:
        log = server.log_text()
        assert "Traceback" not in log, log[-3000:]
        for secret in served.secrets_seen:
            assert secret not in log
