"""Small demo source databases for the example DAGs, built by code (no committed binaries).

    uv run python -m dags_examples.demo_data /tmp/nx1-demo     # prints export lines

creates `retail.db` (products, sales) and `bank.db` (accounts, transactions) in that
folder, with dates relative to today so that this week's rules always find data, and
prints the Airflow Connections the example DAGs use:

    export AIRFLOW_CONN_RETAIL='sqlite://%2Ftmp%2Fnx1-demo%2Fretail.db'
    export AIRFLOW_CONN_BANK='sqlite://%2Ftmp%2Fnx1-demo%2Fbank.db'

(The file path is URL-encoded in the host part, as Airflow's SQLite Connections expect.
Or add Connections `retail` and `bank` of type sqlite in Admin > Connections, with the
file path as host.)
"""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

RETAIL_CONN_ID = "retail"
BANK_CONN_ID = "bank"

PRODUCTS = [
    ("P01", "Espresso", "coffee", 2.40),
    ("P02", "Cappuccino", "coffee", 3.20),
    ("P03", "Flat white", "coffee", 3.40),
    ("P04", "Bagel", "bakery", 2.10),
    ("P05", "Croissant", "bakery", 1.90),
    ("P06", "Blueberry muffin", "bakery", 2.60),
    ("P07", "Orange juice", "drinks", 3.00),
    ("P08", "Crème brûlée", "dessert", 4.50),
]
STORES = ["Lisbon", "Porto", "Madrid", "Paris"]
COUNTRIES = ["PT", "ES", "FR", "DE", "NL"]
HIGH_RISK_COUNTRIES = ["KY", "PA"]


def create_retail_db(path: Path | str, *, today: dt.date | None = None, seed: int = 7) -> Path:
    """Create (or replace) the retail source: `products` and 8 weeks of `sales` up to today."""
    path = Path(path)
    today = today or dt.date.today()
    rnd = random.Random(seed)  # noqa: S311 - repeatable demo data
    path.unlink(missing_ok=True)
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(
            """
            CREATE TABLE products (
                product_id TEXT PRIMARY KEY, name TEXT NOT NULL,
                category TEXT NOT NULL, unit_price REAL NOT NULL);
            CREATE TABLE sales (
                sale_id INTEGER PRIMARY KEY, product_id TEXT NOT NULL REFERENCES products,
                store TEXT NOT NULL, sold_on TEXT NOT NULL, units INTEGER NOT NULL);
            """
        )
        conn.executemany("INSERT INTO products VALUES (?, ?, ?, ?)", PRODUCTS)
        weights = [9, 7, 5, 8, 6, 3, 4, 2]
        rows = []
        for days_ago in range(56):
            day = today - dt.timedelta(days=days_ago)
            for _ in range(rnd.randint(20, 40)):
                product = rnd.choices(PRODUCTS, weights=weights)[0][0]
                rows.append((product, rnd.choice(STORES), day.isoformat(), rnd.randint(1, 6)))
        conn.executemany(
            "INSERT INTO sales (product_id, store, sold_on, units) VALUES (?, ?, ?, ?)", rows
        )
    return path


def create_bank_db(path: Path | str, *, today: dt.date | None = None, seed: int = 11) -> Path:
    """Create (or replace) the bank source: 40 `accounts` and 30 days of `transactions`.

    A few transactions are planted to trip the fraud rules (large cash, high-risk country,
    bursts of transfers within minutes).
    """
    path = Path(path)
    today = today or dt.date.today()
    rnd = random.Random(seed)  # noqa: S311 - repeatable demo data
    path.unlink(missing_ok=True)
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(
            """
            CREATE TABLE accounts (
                account_id TEXT PRIMARY KEY, customer TEXT NOT NULL,
                country TEXT NOT NULL, opened_on TEXT NOT NULL, kyc_verified INTEGER NOT NULL);
            CREATE TABLE transactions (
                txn_id INTEGER PRIMARY KEY, account_id TEXT NOT NULL REFERENCES accounts,
                booked_at TEXT NOT NULL, amount REAL NOT NULL, currency TEXT NOT NULL,
                channel TEXT NOT NULL, counterparty_country TEXT NOT NULL);
            """
        )
        accounts = [
            (
                f"AC{n:04d}",
                f"Customer {n}",
                rnd.choice(COUNTRIES),
                (today - dt.timedelta(days=rnd.randint(40, 2000))).isoformat(),
                int(rnd.random() > 0.1),
            )
            for n in range(1, 41)
        ]
        conn.executemany("INSERT INTO accounts VALUES (?, ?, ?, ?, ?)", accounts)
        start = dt.datetime.combine(today - dt.timedelta(days=30), dt.time(0, 0))
        txns = []
        for _ in range(3000):
            account = rnd.choice(accounts)[0]
            at = start + dt.timedelta(seconds=rnd.randint(0, 30 * 86400))
            amount = round(rnd.lognormvariate(4.0, 1.1), 2)
            channel = rnd.choice(["card", "card", "transfer", "cash"])
            country = rnd.choice(COUNTRIES)
            txns.append((account, at.isoformat(sep=" "), amount, "EUR", channel, country))
        # Planted suspicious activity, within the last days.
        recent = dt.datetime.combine(today, dt.time(9, 0)) - dt.timedelta(days=1)
        txns.append(("AC0007", recent.isoformat(sep=" "), 14_500.00, "EUR", "cash", "PT"))
        txns.append(("AC0012", recent.isoformat(sep=" "), 2_300.00, "EUR", "transfer", "KY"))
        for minute in range(5):
            at = recent + dt.timedelta(minutes=minute * 2)
            txns.append(("AC0021", at.isoformat(sep=" "), 950.00, "EUR", "transfer", "DE"))
        conn.executemany(
            "INSERT INTO transactions (account_id, booked_at, amount, currency, channel, "
            "counterparty_country) VALUES (?, ?, ?, ?, ?, ?)",
            txns,
        )
    return path


def create_demo_databases(folder: Path | str, *, today: dt.date | None = None) -> dict[str, Path]:
    """Create both demo sources in `folder`; returns {conn_id: database path}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {
        RETAIL_CONN_ID: create_retail_db(folder / "retail.db", today=today),
        BANK_CONN_ID: create_bank_db(folder / "bank.db", today=today),
    }


def connection_env(paths: dict[str, Path]) -> dict[str, str]:
    """Environment variables defining the Airflow Connections for `paths` (conn_id -> file)."""
    return {f"AIRFLOW_CONN_{conn_id.upper()}": sqlite_conn_uri(p) for conn_id, p in paths.items()}


def sqlite_conn_uri(path: Path | str) -> str:
    """An Airflow Connection URI of a SQLite file: `sqlite://` + the URL-encoded absolute path."""
    return "sqlite://" + quote(str(Path(path).resolve()), safe="")


def main(argv: list[str] | None = None) -> int:
    """CLI: create the demo databases in FOLDER and print `export` lines for the Connections."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m dags_examples.demo_data FOLDER", file=sys.stderr)
        return 2
    paths = create_demo_databases(args[0])
    for name, value in connection_env(paths).items():
        print(f"export {name}='{value}'")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
