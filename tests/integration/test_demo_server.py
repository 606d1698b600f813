"""The demo's image host over real HTTP on 127.0.0.1."""

import urllib.error
import urllib.request

from streamcap.demo.server import WorldServer, failure_kind
from tests.support import timing


def test_server_serves_scenes_and_a_few_failures():
    with WorldServer(seed=1) as server:
        good = next(i for i in range(100) if failure_kind(i) is None)
        with urllib.request.urlopen(f"{server.base_url}/img/{good}.jpg", timeout=timing.scaled(10)) as reply:
            assert reply.headers["Content-Type"] == "image/jpeg" and reply.read(3) == b"\xff\xd8\xff"
        missing = next(i for i in range(100) if failure_kind(i) == "missing")
        try:
            urllib.request.urlopen(f"{server.base_url}/img/{missing}.jpg", timeout=timing.scaled(10))
            raise AssertionError("expected 404")
        except urllib.error.HTTPError as e:
            assert e.code == 404
