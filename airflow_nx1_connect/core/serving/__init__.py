"""The data REST API, framework-neutral: one request in, one response out.

A package of leaf modules; importing one loads only what it needs. The request path, each
step once and in this order:

- `http`: the `Request` and `Response` types, problems (`problem_for`, the one mapping from
  exceptions, which carry their own status, to problem+json) and `finish` (validators,
  caching headers, 304, gzip through `compression`);
- `router`: routes a request (`handle`), checks the key (`auth`, then `core.ratelimit`),
  parses its parameters once into one query (`params`), reads through `core.reads` /
  `core.arrow`, and picks the encoder;
- `encoders` (JSON, CSV, NDJSON from stored values) and `columnar` (Arrow IPC, Parquet);
- `changes` (the change feed, computed by `core.changes`), `runs` (runs on demand, through
  `core.runs`), `cors` (preflight and headers), `negotiation` (weighted header lists).

The Flask blueprint (`web.blueprint`) and the FastAPI app (`web.api`) only translate their
framework's request into a `Request`, call `router.handle`, and send back the `Response`.
"""
