"""Deployment step 4: the `synapse` database and role, created on the Patroni leader.

The database uses UTF8 with C collation, from template0 (Synapse refuses other
collations). The role carries the session settings Synapse would otherwise SET per
connection, because PgBouncer's transaction pooling does not keep session state.
"""

from __future__ import annotations

import json

from nornir.core.task import Result, Task

from core.errors import HostError
from core.settings import Settings
from tasks.patroni import rest_get
from tasks.pgbouncer import synapse_verifier
from tasks.remote import Expectation, Mode, mode, run

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


def facts_sql(database: str, user: str, verifier: str) -> str:
    return f"""SELECT json_build_object(
  'role', EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {literal(user)}),
  'password_current', EXISTS (SELECT 1 FROM pg_authid WHERE rolname = {literal(user)}
                              AND rolpassword = {literal(verifier)}),
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


def synapse_database(task: Task, settings: Settings) -> Result:
    """On the Patroni leader: ensure the roles, their settings and the database; replicas follow."""
    if mode(task) is Mode.PLAN:
        return Result(host=task.host, result="database and role are converged on the leader at deploy time")
    status, _ = rest_get(task, "/primary", settings.hosts[task.host.name].private_ip)
    if status != 200:
        return Result(host=task.host, result="replica: the leader converges the database")
    database, user = settings.config.database.name, settings.config.database.user
    verifier = synapse_verifier(settings)
    out = run(
        task,
        PSQL,
        stdin=facts_sql(database, user, verifier),
        what=Expectation("the database and role as JSON", "check that PostgreSQL runs: patronictl list"),
    )
    sql, changes = statements(json.loads(out.stdout), database, user, verifier)
    if sql and mode(task) is Mode.APPLY:
        run(
            task,
            PSQL,
            stdin="".join(f"{statement};\n" for statement in sql),
            what=Expectation("database and role converged", "read the PostgreSQL error above"),
        )
    return Result(host=task.host, result="leader", changed=bool(changes), diff="\n".join(changes))
