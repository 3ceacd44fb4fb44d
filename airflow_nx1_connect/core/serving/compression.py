"""gzip content coding of the data API's text bodies (JSON, CSV, NDJSON), streams included.

Chosen by `Accept-Encoding` (RFC 9110 12.5.3: `gzip` or `*` with a q above 0). A gzip
body is a different representation, so it gets its own ETag (the identity ETag with a
`-gzip` suffix inside the quotes) and every compressible response says
`Vary: Accept-Encoding`. Streams are compressed batch by batch (a sync flush after each),
so they stay constant-memory and the client gets data as it is read. Arrow and Parquet
are not compressed here: they are compact already.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from airflow_nx1_connect.core.closing import close
from airflow_nx1_connect.core.serving.negotiation import weighted

GZIP = "gzip"
#: zlib level: level 1 keeps a compressed stream close to the plain one's speed while
#: still shrinking CSV about 4x.
LEVEL = 1
_WBITS_GZIP = 31  # zlib's gzip container


def accepts_gzip(header: str | None) -> bool:
    """True when an Accept-Encoding header value allows gzip."""
    if not header:
        return False
    qualities = dict(weighted(header))
    for coding in (GZIP, "x-gzip"):
        if coding in qualities:
            return qualities[coding] > 0
    return qualities.get("*", 0.0) > 0


def gzip_etag(etag: str) -> str:
    """The ETag of the gzip representation of the body whose identity ETag is `etag`."""
    return etag[:-1] + '-gzip"'


def gzip_bytes(body: bytes) -> bytes:
    """A whole body, gzip-compressed."""
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, _WBITS_GZIP)
    return compressor.compress(body) + compressor.flush()


def gzip_stream(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """A streamed body, gzip-compressed chunk by chunk (closing it closes `chunks`)."""
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, _WBITS_GZIP)
    try:
        for chunk in chunks:
            out = compressor.compress(chunk) + compressor.flush(zlib.Z_SYNC_FLUSH)
            if out:
                yield out
        yield compressor.flush()
    finally:
        close(chunks)
