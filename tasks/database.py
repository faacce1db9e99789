"""Deployment step 4: the `synapse` database and role, created on the Patroni leader.

The database uses UTF8 with C collation, from template0 (Synapse refuses other
collations). The role carries the session settings Synapse would otherwise SET per
connection, because PgBouncer's transaction pooling does not keep session state.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Sequence

from core.errors import HostError
from core.settings import HostInfo, Settings
from tasks.component import Component
from tasks.declaration import Action, Command, Context
from tasks.facts import HostFacts
from tasks.pooler import synapse_verifier

# Synapse sets these on each connection; with transaction pooling they must be defaults
# of the role so that every pooled server connection already has them.
ROLE_SETTINGS = {
    "statement_timeout": "10min",
    "bytea_output": "hex",
    "default_transaction_isolation": "repeatable read",
}
PSQL = "runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d postgres"
# postgres-exporter logs in as this role over the local socket (peer authentication:
# the exporter runs as the OS user of the same name), with pg_monitor's read-only rights.
MONITOR_ROLE = "prometheus"


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def digest(verifier: str) -> str:
    """A SHA-256 of the role's SCRAM verifier: compared on the host, so the verifier itself never is in a
    command (it is password-equivalent for logging in to PostgreSQL)."""
    return hashlib.sha256(verifier.encode()).hexdigest()


def facts_sql(database: str, user: str, verifier_digest: str) -> str:
    return f"""SELECT json_build_object(
  'primary', NOT pg_is_in_recovery(),
  'role', EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {literal(user)}),
  'password_current', EXISTS (SELECT 1 FROM pg_authid WHERE rolname = {literal(user)}
                              AND encode(sha256(convert_to(rolpassword, 'UTF8')), 'hex') = {literal(verifier_digest)}),
  'database', (SELECT json_build_object('encoding', pg_encoding_to_char(encoding), 'collate', datcollate,
                                        'ctype', datctype, 'owner', pg_get_userbyid(datdba))
               FROM pg_database WHERE datname = {literal(database)}),
  'settings', (SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
               WHERE r.rolname = {literal(user)} AND s.setdatabase = 0),
  'monitor', EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {literal(MONITOR_ROLE)}
                     AND pg_has_role(rolname, 'pg_monitor', 'MEMBER')));
"""


def statements(facts: dict, database: str, user: str, verifier: str) -> tuple[list[str], list[str]]:
    """(SQL to run, what it changes) to take the `facts` to the wanted database and role."""
    sql, changes = [], []
    if not facts["role"]:
        sql.append(f'CREATE ROLE "{user}" LOGIN')
        changes.append(f"role {user} created")
    if not facts["password_current"]:
        sql.append(f'ALTER ROLE "{user}" PASSWORD {literal(verifier)}')
        changes.append(f"role {user}: password set (SCRAM verifier)")
    db = facts["database"]
    if db is None:
        sql.append(
            f"CREATE DATABASE \"{database}\" OWNER \"{user}\" ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' "
            "TEMPLATE template0"
        )
        changes.append(f"database {database} created (UTF8, C collation)")
    elif (db["encoding"], db["collate"], db["ctype"]) != ("UTF8", "C", "C"):
        raise HostError(
            f"database {database} exists with encoding {db['encoding']}, collation {db['collate']}, "
            f"ctype {db['ctype']}: Synapse needs UTF8 with C collation. Dump it, drop it and let the "
            "deploy create it again, then restore the dump into it"
        )
    current = dict(item.split("=", 1) for item in facts["settings"] or [])
    for name, value in ROLE_SETTINGS.items():
        if current.get(name) != value:
            sql.append(f'ALTER ROLE "{user}" SET {name} = {literal(value)}')
            changes.append(f"role {user}: {name} = {value}")
    if not facts["monitor"]:
        sql.append(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {literal(MONITOR_ROLE)}) "
            f'THEN CREATE ROLE "{MONITOR_ROLE}" LOGIN; END IF; END $$'
        )
        sql.append(f'GRANT pg_monitor TO "{MONITOR_ROLE}"')
        changes.append(f"role {MONITOR_ROLE} (pg_monitor) for postgres-exporter created")
    return sql, changes


NOT_RUNNING = '{"primary": null}'  # what the read says where PostgreSQL does not answer


def facts_command(settings: Settings, _host: HostInfo) -> str:
    database = settings.config.database
    sql = facts_sql(database.name, database.user, digest(synapse_verifier(settings)))
    return f"{PSQL} -c {shlex.quote(sql)} 2>/dev/null || echo {shlex.quote(NOT_RUNNING)}"


def converge_sql(context: Context, _facts: HostFacts | None, _written: frozenset[str]) -> list[Command]:
    """On the primary: the SQL that takes the roles, their settings and the database to the wanted state."""
    if context.reads is None:
        return []
    facts = json.loads(context.reads["database"])
    if not facts["primary"]:  # a replica follows the primary; a member not running has nothing to change yet
        return []
    database, user = context.settings.config.database.name, context.settings.config.database.user
    verifier = synapse_verifier(context.settings)
    sql, changes = statements(facts, database, user, verifier)
    if not sql:
        return []
    return [
        Command(
            PSQL,
            "\n".join(changes),
            "database and role converged",
            "read the PostgreSQL error above",
            name="psql: the synapse database and roles",
            stdin="".join(f"{statement};\n" for statement in sql),
        )
    ]


def where_converged(context: Context, _actions: Sequence[Action]) -> tuple[str, str]:
    assert context.reads is not None  # plan mode says `unread`
    primary = json.loads(context.reads["database"])["primary"]
    if primary is None:
        return "PostgreSQL does not answer here: nothing converged on this member", ""
    return ("leader" if primary else "replica: the leader converges the database"), ""


# Replicas follow the primary; the SQL runs where PostgreSQL is not in recovery.
SYNAPSE_DATABASE = Component(
    "synapse-database",
    groups=("patroni",),
    summary="database synapse (UTF8, C collation) and its role, on the leader",
    after=("patroni-config",),  # the configured cluster: patroni-config may restart members
    reads={"database": facts_command},
    behaviour=converge_sql,
    notes=where_converged,
    unread="database and role are converged on the leader at deploy time",
)
