"""Health gates: wait, on the host itself, until a port, URL or command answers.

Each wait is a single remote command looping with a deadline, so a slow service costs
one round trip rather than one per poll.
"""

from __future__ import annotations

import shlex

from nornir.core.task import Result, Task

from tasks.remote import Expectation, Mode, mode, run


def port_script(port: int, address: str, timeout: float) -> str:
    return f"timeout {timeout} bash -c 'until (exec 3<>/dev/tcp/{address}/{port}) 2>/dev/null; do sleep 0.3; done'"


def http_script(urls: list[str], status: int, timeout: float, host_header: str | None) -> str:
    """Poll every URL until each has answered `status` once; name the ones that never did."""
    headers = {"Host": host_header} if host_header else {}
    program = (
        "import ssl,sys,time,urllib.request,urllib.error\n"
        f"pending,want,deadline={urls!r},{status},time.monotonic()+{timeout}\n"
        "ctx=ssl.create_default_context()\n"
        "last={u:'no answer' for u in pending}\n"
        "while pending and time.monotonic()<deadline:\n"
        "    for url in list(pending):\n"
        f"        req=urllib.request.Request(url,headers={headers!r})\n"
        "        try:\n"
        "            code=urllib.request.urlopen(req,timeout=3,context=ctx).status\n"
        "        except urllib.error.HTTPError as e:\n"
        "            code=e.code\n"
        "        except Exception as e:\n"
        "            code,last[url]=None,str(e)\n"
        "        if code==want: pending.remove(url)\n"
        "        elif code is not None: last[url]=f'HTTP {code}'\n"
        "    if pending: time.sleep(0.5)\n"
        "for url in pending: print(url, last[url], file=sys.stderr)\n"
        "sys.exit(1 if pending else 0)\n"
    )
    return f"python3 -c {shlex.quote(program)}"


def tls_script(address: str, port: int, server_name: str, timeout: float) -> str:
    program = (
        "import socket,ssl,sys,time\n"
        f"address,port,name,deadline={address!r},{port},{server_name!r},time.monotonic()+{timeout}\n"
        "ctx=ssl.create_default_context()\n"
        "last='no answer'\n"
        "while time.monotonic()<deadline:\n"
        "    try:\n"
        "        with socket.create_connection((address,port),timeout=3) as raw:\n"
        "            with ctx.wrap_socket(raw,server_hostname=name):\n"
        "                sys.exit(0)\n"
        "    except OSError as e:\n"
        "        last=str(e)\n"
        "    time.sleep(0.5)\n"
        "print(last,file=sys.stderr); sys.exit(1)\n"
    )
    return f"python3 -c {shlex.quote(program)}"


def command_script(script: str, timeout: float) -> str:
    return f"timeout {timeout} bash -c {shlex.quote(f'until {script}; do sleep 0.5; done')}"


def _wait(task: Task, script: str, what: str, on_failure: str, timeout: float, *, reads_only: bool = True) -> Result:
    """Run a waiting script; port, URL and TLS probes only read (any command may not)."""
    if mode(task) is not Mode.APPLY:
        return Result(host=task.host, result=f"would wait for {what}")
    run(
        task,
        script,
        timeout=int(timeout) + 30,
        what=Expectation(f"{what} within {timeout:g} s", on_failure),
        reads_only=reads_only,
    )
    return Result(host=task.host, result=f"{what}: ok")


def wait_for_port(task: Task, port: int, address: str = "127.0.0.1", timeout: float = 30) -> Result:
    """Wait until a TCP connection to `address:port` succeeds from the host."""
    return _wait(
        task,
        port_script(port, address, timeout),
        f"TCP {address}:{port} accepting",
        f"check that the service listening on {port} started: systemctl status / journalctl on the host",
        timeout,
    )


def wait_for_http(
    task: Task, url: str, status: int = 200, timeout: float = 30, host_header: str | None = None
) -> Result:
    """Wait until `url`, fetched from the host, answers with `status`."""
    return wait_for_urls(task, [url], status, timeout, host_header)


def wait_for_urls(
    task: Task, urls: list[str], status: int = 200, timeout: float = 30, host_header: str | None = None
) -> Result:
    """Wait until every URL, fetched from the host, has answered with `status` (one remote command)."""
    what = urls[0] if len(urls) == 1 else f"{len(urls)} URLs ({urls[0]} …)"
    return _wait(
        task,
        http_script(urls, status, timeout, host_header),
        f"{what} answering {status}",
        "the URLs that never answered are listed above; fetch them on the host (curl -v) and read the service's log",
        timeout,
    )


def wait_for_command(task: Task, script: str, timeout: float = 30, what: str | None = None) -> Result:
    """Wait until `script` exits 0 on the host."""
    return _wait(
        task,
        command_script(script, timeout),
        what or f"'{script}' succeeding",
        f"run '{script}' on the host and read its output",
        timeout,
        reads_only=False,
    )


def wait_for_tls(task: Task, address: str, port: int, server_name: str, timeout: float = 30) -> Result:
    """Wait until `address:port` completes a TLS handshake whose certificate the host trusts for `server_name`."""
    return _wait(
        task,
        tls_script(address, port, server_name, timeout),
        f"TLS on {address}:{port} for {server_name}",
        f"check the certificate and the listener: openssl s_client -connect {address}:{port} -servername {server_name}",
        timeout,
    )
