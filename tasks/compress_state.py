"""`maintenance.py compress-state`: one run of the state compressor now, and what it did.

The run goes through the compressor's unit (tasks/state_compressor.py): systemd joins a run
already going on this host instead of starting a second one, and the run script's advisory
lock refuses one started anywhere else. What the run did is read back from the metrics it
wrote and the last lines of its journal.
"""

from __future__ import annotations

from nornir.core.task import AggregatedResult, Result, Task

from core.errors import HostError
from core.settings import Settings
from tasks.remote import Expectation, Mode, mode, run
from tasks.state_compressor import UNIT, WRITTEN

# A run through the unit, then its last journal lines and the metrics it wrote.
RUN_NOW = (
    f"systemctl start {UNIT}; status=$?; "
    f"journalctl -o cat --no-pager _SYSTEMD_INVOCATION_ID=$(systemctl show -P InvocationID {UNIT}) | tail -n 5; "
    f"echo '--- metrics'; cat {WRITTEN} 2>/dev/null; exit $status"
)


def parse_metrics(text: str) -> dict[str, float]:
    """`name{labels}` → value of a Prometheus text file (comments and lines that are not samples left out)."""
    found = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name and not line.startswith("#"):
            try:
                found[name] = float(value)
            except ValueError:
                continue
    return found


def compress_now(task: Task, settings: Settings) -> Result:
    """Run the state compressor now and say what it did: rows saved, chunks, state groups left for later runs."""
    if mode(task) is not Mode.APPLY:
        return Result(host=task.host, changed=True, diff=f"systemctl start {UNIT} (one compressor run)")
    out = run(
        task,
        RUN_NOW,
        what=Expectation(f"{UNIT} ran", f"read 'journalctl -u {UNIT}' on the host"),
        ok_codes=(0, 1, 3),
        timeout=6 * 3600,
    )
    journal, _, metrics = out.stdout.partition("--- metrics\n")
    found = parse_metrics(metrics)
    if out.exit_code != 0 or found.get('matrix_platform_state_compressor_last_run_result{result="failed"}'):
        raise HostError(f"{task.host.name}: the state compressor failed: {journal.strip() or out.stderr.strip()}")
    refused = bool(found.get('matrix_platform_state_compressor_last_run_result{result="refused"}'))
    return Result(
        host=task.host,
        result={"refused": refused, "said": journal.strip().splitlines()[-1:], "metrics": found},
        changed=bool(found.get("matrix_platform_state_compressor_rows_saved")),
    )


def compress_table(result: AggregatedResult, _settings: Settings) -> str:
    """Per Synapse host: rows saved, chunks compressed and skipped, state groups left, the run's length."""
    lines = []
    for name, host in result.items():
        found = host[0].result
        if not isinstance(found, dict):
            continue
        if found["refused"]:
            lines.append(f"  {name}: refused: {' '.join(found['said'])}")
            continue
        metric = {key.removeprefix("matrix_platform_state_compressor_"): v for key, v in found["metrics"].items()}
        compressed, skipped = (round(metric.get(f'chunks{{outcome="{k}"}}', 0)) for k in ("compressed", "skipped"))
        lines.append(
            f"  {name}: {round(metric.get('rows_saved', 0)):,} rows of state_groups_state saved; chunks: "
            f"{compressed} compressed, {skipped} skipped (nothing to save); "
            f"{round(metric.get('pending_state_groups', 0)):,} state groups not compressed yet; "
            f"{metric.get('last_run_seconds', 0):.1f} s"
        )
    return "\n".join(lines)
