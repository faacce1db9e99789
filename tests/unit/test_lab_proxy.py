"""The lab's package proxy against a stand-in mirror on loopback: what it fetches, once, and what it refuses."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from lab.proxy import source_prefixes
from lab.proxy_server import Cache, Server

INDEX, DEB = "/debian/dists/bookworm/InRelease", "/debian/pool/main/t/tree/tree_2.1.0-1_amd64.deb"
FILES = {INDEX: b"index of the day", DEB: b"a package" * 100_000}


class Mirror(BaseHTTPRequestHandler):
    """Serves FILES slowly enough that concurrent requests overlap; counts every request."""

    protocol_version = "HTTP/1.1"
    requests: ClassVar[Counter[str]] = Counter()

    def do_GET(self) -> None:
        Mirror.requests[self.path] += 1
        time.sleep(0.1)
        body = FILES.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.send_header("Last-Modified", "Sat, 01 Nov 2025 09:00:00 GMT")
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: object) -> None:
        pass


def serving(server: ThreadingHTTPServer) -> str:
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[str, str, Cache]]:
    """(mirror URL, proxy URL, the proxy's cache), the proxy serving the mirror's /debian/ only."""
    Mirror.requests.clear()
    mirror_server = ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    mirror = serving(mirror_server)
    cache = Cache(tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    proxy_server = Server(("127.0.0.1", 0), cache, [f"{mirror}/debian/"])
    proxy = serving(proxy_server)
    yield mirror, proxy, cache
    proxy_server.shutdown()
    mirror_server.shutdown()


def get(proxy: str, url: str) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_concurrent_requests_for_one_file_make_one_download(proxied: tuple[str, str, Cache]) -> None:
    mirror, proxy, _ = proxied
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: get(proxy, mirror + DEB), range(8)))
    assert answers == [(200, FILES[DEB])] * 8
    assert get(proxy, mirror + DEB)[0] == 200
    assert Mirror.requests == {DEB: 1}


def test_an_index_is_fetched_again_once_stale_and_a_package_never(proxied: tuple[str, str, Cache]) -> None:
    mirror, proxy, cache = proxied
    assert get(proxy, mirror + INDEX) == (200, FILES[INDEX]) and get(proxy, mirror + DEB)[0] == 200
    assert get(proxy, mirror + INDEX)[0] == 200 and Mirror.requests[INDEX] == 1  # still fresh
    cache.fresh_seconds = 0
    assert get(proxy, mirror + INDEX)[0] == 200 and get(proxy, mirror + DEB)[0] == 200
    assert Mirror.requests == {INDEX: 2, DEB: 1}


def test_the_mirrors_answer_and_date_are_passed_on(proxied: tuple[str, str, Cache]) -> None:
    mirror, proxy, _ = proxied
    assert get(proxy, f"{mirror}/debian/dists/trixie/InRelease") == (404, b"")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
    with opener.open(mirror + INDEX, timeout=10) as response:
        assert response.headers["Last-Modified"] == "Sat, 01 Nov 2025 09:00:00 GMT"


def test_urls_outside_the_sources_are_refused_without_asking_anyone(proxied: tuple[str, str, Cache]) -> None:
    mirror, proxy, _ = proxied
    assert get(proxy, f"{mirror}/other/secret")[0] == 403
    assert get(proxy, f"{mirror}/debian/../other/secret")[0] == 403
    assert get(proxy, "http://127.0.0.1:9" + INDEX)[0] == 403
    assert not Mirror.requests


def test_an_unreachable_mirror_is_a_bad_gateway(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    server = Server(("127.0.0.1", 0), Cache(tmp_path / "cache"), ["http://127.0.0.1:9/debian/"])
    proxy = serving(server)
    try:
        assert get(proxy, "http://127.0.0.1:9" + INDEX)[0] == 502
    finally:
        server.shutdown()
    assert not list((tmp_path / "cache").iterdir())  # no partial file left behind


def test_source_prefixes_come_from_both_source_formats_and_skip_https() -> None:
    files = {
        "etc/apt/sources.list": "deb [arch=amd64] http://mirror.test/debian bookworm main\n#deb http://old.test/ x\n",
        "etc/apt/sources.list.d/debian.sources": (
            "Types: deb\nURIs: http://mirror.test/debian-security/ https://secure.test/debian\nSuites: bookworm\n"
        ),
        "etc/apt/apt.conf.d/80machine-x": 'Acquire::Retries "3";\n',
    }
    assert source_prefixes(files) == ["http://mirror.test/debian-security/", "http://mirror.test/debian/"]
