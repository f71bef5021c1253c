"""Preparing a target database for phigate: the read-only role, the write role, and the execution ledger.

Run once per data source by the target's owner (a role that can create roles and grant on the data). The read
role can only SELECT, and is read-only by default even at the session level; the write role owns the data so
approved DDL can run; neither is a superuser.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from approvals.ledger import ledger_ddl

_ROLE_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"


@dataclass(frozen=True)
class ProvisionedUrls:
    read_url: str
    write_url: str


def url_for_role(owner_url: str, role: str, password: str) -> str:
    """The owner's URL with another user and password (same host, port, database and options)."""
    parts = urlsplit(owner_url)
    host = parts.hostname or ""
    netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@{host}"
    if ":" in host:  # IPv6 literal
        netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@[{host}]"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _ensure_role(conn: psycopg.Connection, role: str, password: str) -> None:
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    verb = "ALTER" if exists else "CREATE"
    conn.execute(
        sql.SQL(f"{verb} ROLE {{}} {_ROLE_ATTRIBUTES} PASSWORD {{}}").format(
            sql.Identifier(role), sql.Literal(password)
        )
    )


def provision(
    owner_url: str, *, read_role: str, write_role: str, transfer_ownership: bool = False, schema: str = "public"
) -> ProvisionedUrls:
    read_password, write_password = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    with psycopg.connect(owner_url, autocommit=True) as conn:
        dbname = conn.info.dbname
        _ensure_role(conn, read_role, read_password)
        _ensure_role(conn, write_role, write_password)
        reader, writer = sql.Identifier(read_role), sql.Identifier(write_role)
        db, nsp = sql.Identifier(dbname), sql.Identifier(schema)
        statements = [
            sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(reader),
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}, {}").format(db, reader, writer),
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(nsp, reader),
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(nsp, reader),
            sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(nsp, writer),
            sql.SQL(
                "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES ON ALL TABLES IN SCHEMA {} TO {}"
            ).format(nsp, writer),
            sql.SQL("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {} TO {}").format(nsp, writer),
            # Tables the writer creates later (approved DDL) stay readable by the reader.
            sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT SELECT ON TABLES TO {}").format(
                writer, nsp, reader
            ),
        ]
        for statement in statements:
            conn.execute(statement)
        if transfer_ownership:
            rows = conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'S') "
                "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i'))",
                (schema,),
            ).fetchall()
            for (relname,) in rows:
                conn.execute(sql.SQL("ALTER TABLE {}.{} OWNER TO {}").format(nsp, sql.Identifier(relname), writer))
        for statement_text in ledger_ddl(write_role, read_role):
            conn.execute(statement_text)  # type: ignore[arg-type]
    return ProvisionedUrls(
        read_url=url_for_role(owner_url, read_role, read_password),
        write_url=url_for_role(owner_url, write_role, write_password),
    )
