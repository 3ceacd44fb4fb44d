"""Webhooks: subscriptions per data API, and the outbox of events to push to them.

- A subscription (`create_webhook`) has a URL and a secret (`whsec_` + base64 of 32 random
  bytes) shown once and kept encrypted with Airflow's Fernet key, as Airflow keeps Connection
  passwords; the server needs it back to sign.
- `record_publish` runs inside the publish transaction that moves a data API's latest pointer
  (`core.writer`): it writes the `snapshot.published` event and one pending delivery per
  subscription, so an event exists if and only if the snapshot was published. `send_test`
  writes a `ping` event for one subscription.
- Delivering (claiming due deliveries, signing per Standard Webhooks, POSTing, retrying) is
  `core.webhooks.delivery`.
- URLs: `http` or `https`; a host that resolves to a loopback, private, link-local or
  unspecified address is refused unless `[nx1_connect] webhook_allow_private_hosts`, here at
  creation and again on the resolved address at every delivery (DNS rebinding).

Every change through the `*_audited` functions is recorded in the audit trail. The secret never
enters a log, an audit event or a listing.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote as url_quote
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from airflow_nx1_connect.core import audit
from airflow_nx1_connect.core.clock import iso, utcnow
from airflow_nx1_connect.core.errors import NotFound, ValidationError
from airflow_nx1_connect.core.snapshots import Snapshot, get_data_api, use_bind
from airflow_nx1_connect.core.store import data_apis
from airflow_nx1_connect.core.webhooks.tables import deliveries, events, webhooks

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
#: Random bytes in a secret (the contract asks for at least 24).
SECRET_BYTES = 32
MAX_URL_LENGTH = 2000
MAX_DESCRIPTION_LENGTH = 1000
#: Deliveries listed per webhook unless a limit is given, and the most.
DEFAULT_DELIVERIES = 100
MAX_DELIVERIES = 1000
#: The data REST API's path on the FastAPI mount (what `latest_url` / `changes_url` name).
API_PATH = "/nx1/api/v1"


class WebhookNotFound(NotFound):
    """No webhook has that id (public: 404)."""


# ---------------------------------------------------------------------------------------
# Secrets and signatures
# ---------------------------------------------------------------------------------------


def new_secret() -> str:
    """A new signing secret: `whsec_` + base64 of SECRET_BYTES random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_bytes(secret: str) -> bytes:
    """The key bytes of a `whsec_` secret (what the HMAC is keyed with)."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value: `v1,` + base64 HMAC-SHA256 of
    `{msg_id}.{timestamp}.{body}` keyed with the secret's bytes (Standard Webhooks)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _fernet() -> Any:
    """Airflow's Fernet (`[core] fernet_key`), or its pass-through when no key is set (as for
    Connection passwords). Imported lazily: only webhook creation and delivery need it."""
    from airflow.models.crypto import get_fernet

    return get_fernet()


def encrypt_secret(secret: str) -> tuple[str, bool]:
    """(the stored text, whether it is encrypted)."""
    fernet = _fernet()
    return fernet.encrypt(secret.encode()).decode(), bool(fernet.is_encrypted)


def decrypt_secret(stored: str, encrypted: bool) -> str:
    """The secret back from its stored text."""
    if not encrypted:
        return stored
    fernet = _fernet()
    if not fernet.is_encrypted:
        raise ValueError(
            "the webhook secret is encrypted but [core] fernet_key is not set on this process"
        )
    return fernet.decrypt(stored.encode()).decode()


# ---------------------------------------------------------------------------------------
# URLs and addresses
# ---------------------------------------------------------------------------------------


def is_private(address: str) -> bool:
    """Whether an IP address is loopback, private, link-local, unspecified (or otherwise
    not a public unicast address: multicast, reserved); IPv4-mapped IPv6 as its IPv4."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_unspecified
        or ip.is_multicast
        or ip.is_reserved
    )


def resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to (an IP literal is itself); [] when it does not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def url_parts(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a webhook URL; ValueError when it has none."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError("not an http(s) URL with a host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, host, port


def validate_url(url: object, *, allow_private: bool) -> str:
    """The URL if it may be a webhook's, else ValidationError saying why.

    `http` or `https`, a host, no user name or password in it (the URL is listed). Unless
    `allow_private`, a host that resolves to a private address is refused; a host that does
    not resolve now is accepted (it is checked again at every delivery).
    """
    if not isinstance(url, str) or not url.strip():
        raise ValidationError("url is required: the receiver's http(s) URL.", field="url")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise ValidationError(
            f"url must be at most {MAX_URL_LENGTH} characters, without spaces or control "
            "characters.",
            field="url",
        )
    try:
        parts = urlsplit(url)
        _scheme, host, port = url_parts(url)
    except ValueError:
        raise ValidationError(
            f"url {url[:100]!r} is not valid: give an http:// or https:// URL with a host, "
            "e.g. https://hooks.example.com/nx1.",
            field="url",
        ) from None
    if parts.username is not None or parts.password is not None:
        raise ValidationError(
            "url must not hold a user name or password (webhook URLs are listed); the "
            "receiver authenticates each push by its webhook-signature header.",
            field="url",
        )
    if not allow_private:
        private = [a for a in resolve(host, port) if is_private(a)]
        if private:
            raise ValidationError(
                f"url host {host!r} resolves to {private[0]}, a loopback, private, "
                "link-local or unspecified address, which webhooks may not reach. Use a "
                "public host, or set [nx1_connect] webhook_allow_private_hosts = True.",
                field="url",
            )
    return url


def _description(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION_LENGTH:
        raise ValidationError(
            f"description must be text of at most {MAX_DESCRIPTION_LENGTH} characters.",
            field="description",
        )
    return value.strip() or None


# ---------------------------------------------------------------------------------------
# Subscriptions
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Webhook:
    """A subscription of one URL to one data API's events (never with its secret)."""

    id: str
    data_api: str
    url: str
    description: str | None
    created_at: dt.datetime

    def to_dict(self) -> dict[str, Any]:
        """The public object (admin API, `webhooks list --json`)."""
        return {
            "webhook_id": self.id,
            "data_api": self.data_api,
            "url": self.url,
            "description": self.description,
            "created_at": iso(self.created_at),
        }


@dataclass(frozen=True)
class CreatedWebhook:
    """A new webhook and its secret, which is shown this once."""

    webhook: Webhook
    secret: str


def _webhook(row: Any) -> Webhook:
    return Webhook(row.id, row.data_api, row.url, row.description, row.created_at)


_PUBLIC = (
    webhooks.c.id,
    webhooks.c.data_api,
    webhooks.c.url,
    webhooks.c.description,
    webhooks.c.created_at,
)


def create_webhook(
    engine: Engine,
    *,
    data_api: str,
    url: object,
    description: object = None,
    allow_private: bool,
    now: dt.datetime | None = None,
) -> CreatedWebhook:
    """Subscribe `url` to `data_api`'s events; the secret is in the result, this once."""
    get_data_api(engine, data_api)
    checked = validate_url(url, allow_private=allow_private)
    text = _description(description)
    secret = new_secret()
    stored, encrypted = encrypt_secret(secret)
    webhook_id = uuid.uuid4().hex
    with engine.begin() as conn:
        conn.execute(
            webhooks.insert().values(
                id=webhook_id,
                data_api=data_api,
                url=checked,
                description=text,
                secret=stored,
                secret_encrypted=encrypted,
                created_at=now or utcnow(),
            )
        )
        row = conn.execute(sa.select(*_PUBLIC).where(webhooks.c.id == webhook_id)).one()
    return CreatedWebhook(_webhook(row), secret)


def get_webhook(bind: Engine | Connection, webhook_id: str) -> Webhook:
    """The webhook with that id, or WebhookNotFound."""
    with use_bind(bind) as conn:
        row = conn.execute(sa.select(*_PUBLIC).where(webhooks.c.id == str(webhook_id))).first()
    if row is None:
        raise WebhookNotFound(
            f"No webhook has id {str(webhook_id)[:40]!r}. List them with: nx1-connect webhooks list"
        )
    return _webhook(row)


def list_webhooks(
    bind: Engine | Connection,
    *,
    data_api: str | None = None,
    kinds: Iterable[str] | None = None,
) -> list[Webhook]:
    """Webhooks, newest first; only `data_api`'s, or only those of data APIs of `kinds`."""
    query = sa.select(*_PUBLIC).order_by(webhooks.c.created_at.desc(), webhooks.c.id)
    if data_api is not None:
        query = query.where(webhooks.c.data_api == data_api)
    if kinds is not None:
        names = sa.select(data_apis.c.name).where(data_apis.c.kind.in_(sorted(set(kinds))))
        query = query.where(webhooks.c.data_api.in_(names))
    with use_bind(bind) as conn:
        return [_webhook(r) for r in conn.execute(query)]


def delete_webhook(engine: Engine, webhook_id: str) -> Webhook:
    """Delete a webhook and its deliveries (pending ones are never sent)."""
    with engine.begin() as conn:
        found = get_webhook(conn, webhook_id)
        conn.execute(webhooks.delete().where(webhooks.c.id == found.id))
    return found


# ---------------------------------------------------------------------------------------
# The outbox
# ---------------------------------------------------------------------------------------


def new_event_id() -> str:
    """An event id, the `webhook-id` header (the same on every retry)."""
    return "msg_" + uuid.uuid4().hex


def _body(event_type: str, at: dt.datetime, data: dict[str, Any]) -> str:
    return json.dumps(
        {"type": event_type, "timestamp": iso(at), "data": data},
        separators=(",", ":"),
        ensure_ascii=False,
    )


def base_url() -> str:
    """Airflow's `[api] base_url` without its trailing slash, "" when not set (then the event's
    URLs are path-absolute). Read through Airflow's configuration, lazily (as `core.settings`
    reads `_cmd` options): the publish runs in a task process, which has it loaded."""
    try:
        from airflow.configuration import conf
    except ImportError:  # pragma: no cover - the package always runs beside Airflow
        return ""
    return str(conf.get("api", "base_url", fallback="") or "").strip().rstrip("/")


def data_urls(data_api: str, new_id: str, previous_id: str | None) -> tuple[str, str | None]:
    """(`latest_url`, `changes_url` or None) of a publish."""
    root = f"{base_url()}{API_PATH}/data-apis/{url_quote(data_api, safe='')}"
    changes = f"{root}/changes?since={previous_id}&to={new_id}" if previous_id else None
    return f"{root}/latest", changes


def _insert_event(
    conn: Connection,
    *,
    event_id: str,
    data_api: str,
    event_type: str,
    snapshot_id: str | None,
    payload: str,
    webhook_ids: list[str],
    now: dt.datetime,
) -> None:
    conn.execute(
        events.insert().values(
            id=event_id,
            data_api=data_api,
            type=event_type,
            snapshot_id=snapshot_id,
            payload=payload,
            created_at=now,
        )
    )
    conn.execute(
        deliveries.insert(),
        [
            {
                "id": uuid.uuid4().hex,
                "event_id": event_id,
                "webhook_id": webhook_id,
                "status": "pending",
                "attempts": 0,
                "created_at": now,
                "next_attempt_at": now,
            }
            for webhook_id in webhook_ids
        ],
    )


def record_publish(
    conn: Connection, snapshot: Snapshot, previous_id: str | None, now: dt.datetime | None = None
) -> str | None:
    """In the publish transaction: the `snapshot.published` event of `snapshot` and one pending
    delivery per webhook of its data API. Returns the event id (None without webhooks: no one
    to tell). `previous_id` is the data API's latest snapshot before this publish."""
    webhook_ids = list(
        conn.execute(
            sa.select(webhooks.c.id).where(webhooks.c.data_api == snapshot.data_api)
        ).scalars()
    )
    if not webhook_ids:
        return None
    now = now or utcnow()
    previous = previous_id if previous_id != snapshot.id else None
    latest_url, changes_url = data_urls(snapshot.data_api, snapshot.id, previous)
    data = {
        "data_api": snapshot.data_api,
        "snapshot": snapshot.summary(),
        "previous_snapshot_id": previous,
        "latest_url": latest_url,
        "changes_url": changes_url,
    }
    event_id = new_event_id()
    _insert_event(
        conn,
        event_id=event_id,
        data_api=snapshot.data_api,
        event_type="snapshot.published",
        snapshot_id=snapshot.id,
        payload=_body("snapshot.published", now, data),
        webhook_ids=webhook_ids,
        now=now,
    )
    return event_id


def send_test(engine: Engine, webhook_id: str, now: dt.datetime | None = None) -> str:
    """Queue a `ping` event for one webhook (delivered like any event); its event id."""
    now = now or utcnow()
    with engine.begin() as conn:
        found = get_webhook(conn, webhook_id)
        event_id = new_event_id()
        _insert_event(
            conn,
            event_id=event_id,
            data_api=found.data_api,
            event_type="ping",
            snapshot_id=None,
            payload=_body("ping", now, {"webhook_id": found.id}),
            webhook_ids=[found.id],
            now=now,
        )
    return event_id


# ---------------------------------------------------------------------------------------
# Deliveries (what the admin sees)
# ---------------------------------------------------------------------------------------


def validate_limit(limit: object) -> int:
    """Deliveries to list: a whole number from 1 to MAX_DELIVERIES (text accepted)."""
    if limit is None or limit == "":
        return DEFAULT_DELIVERIES
    text = str(limit).strip()
    if isinstance(limit, bool) or not text.isdigit() or not 1 <= int(text) <= MAX_DELIVERIES:
        raise ValidationError(
            f"limit must be a whole number from 1 to {MAX_DELIVERIES}; got {text[:40]!r}.",
            field="limit",
        )
    return int(text)


def list_deliveries(
    engine: Engine, webhook_id: str, *, limit: object = None
) -> list[dict[str, Any]]:
    """The webhook's deliveries, newest first, as public dicts."""
    count = validate_limit(limit)
    get_webhook(engine, webhook_id)
    query = (
        sa.select(
            deliveries.c.id,
            deliveries.c.event_id,
            events.c.type,
            deliveries.c.created_at,
            deliveries.c.attempts,
            deliveries.c.status,
            deliveries.c.response_status,
            deliveries.c.error,
            deliveries.c.next_attempt_at,
            deliveries.c.last_attempt_at,
        )
        .select_from(deliveries.join(events, events.c.id == deliveries.c.event_id))
        .where(deliveries.c.webhook_id == webhook_id)
        .order_by(deliveries.c.created_at.desc(), deliveries.c.id.desc())
        .limit(count)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        {
            "delivery_id": r.id,
            "event_id": r.event_id,
            "type": r.type,
            "at": iso(r.created_at),
            "attempts": r.attempts,
            "status": r.status,
            "response_status": r.response_status,
            "error": r.error,
            "next_attempt_at": iso(r.next_attempt_at),
            "last_attempt_at": iso(r.last_attempt_at),
        }
        for r in rows
    ]


# ---------------------------------------------------------------------------------------
# Audited actions (CLI, admin API, admin view)
# ---------------------------------------------------------------------------------------


def create_webhook_audited(
    engine: Engine,
    *,
    data_api: str,
    url: object,
    description: object = None,
    actor: Any,
    allow_private: bool,
) -> CreatedWebhook:
    """`create_webhook`, recorded in the audit trail (`actor`: a `core.control.Actor`)."""
    created = create_webhook(
        engine, data_api=data_api, url=url, description=description, allow_private=allow_private
    )
    _audit(engine, "create_webhook", created.webhook, actor, {"url": created.webhook.url})
    return created


def delete_webhook_audited(engine: Engine, webhook_id: str, *, actor: Any) -> Webhook:
    """`delete_webhook`, recorded in the audit trail."""
    found = delete_webhook(engine, webhook_id)
    _audit(engine, "delete_webhook", found, actor, {"url": found.url})
    return found


def send_test_audited(engine: Engine, webhook_id: str, *, actor: Any) -> str:
    """`send_test`, recorded in the audit trail; the ping's event id."""
    event_id = send_test(engine, webhook_id)
    _audit(engine, "test_webhook", get_webhook(engine, webhook_id), actor, {"event_id": event_id})
    return event_id


def _audit(
    engine: Engine, action: str, webhook: Webhook, actor: Any, detail: dict[str, Any]
) -> None:
    audit.record(
        engine,
        actor=actor.name,
        action=action,
        data_api=webhook.data_api,
        remote_addr=actor.remote_addr,
        detail={"webhook_id": webhook.id, **detail},
    )
