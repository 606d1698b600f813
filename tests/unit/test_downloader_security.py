"""The address guard and the header parsing of the fetcher, without a network."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from streamcap.downloader.fetch import retry_after_seconds, robots_opt_out
from streamcap.downloader.security import (
    BlockedAddressError,
    InvalidURLError,
    address_allowed,
    blocked_reason,
    check_url,
    guarded_socket_factory,
    parse_ip_host,
)

DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex"})


@pytest.mark.parametrize(
    "host, expected",
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),  # one 32-bit number
        ("0x7f000001", "127.0.0.1"),  # hex
        ("0X7F000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),  # octal first part
        ("127.1", "127.0.0.1"),  # short forms: the last part fills the rest
        ("127.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7f.0x0.0.0x1", "127.0.0.1"),
        ("169.254.169.254.", "169.254.169.254"),  # a trailing dot
        ("[::1]", "::1"),
        ("[::ffff:127.0.0.2]", "::ffff:127.0.0.2"),
        ("::1", "::1"),
        ("[fe80::1%eth0]", "fe80::1"),
        ("0x", "0.0.0.0"),  # as browsers read it: the safe side
    ],
)
def test_raw_ip_hosts_are_parsed_in_every_notation(host, expected):
    assert parse_ip_host(host) == ipaddress.ip_address(expected)


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "127.0.0.1.example.com",
        "1.2.3.4.5",
        "256.1.1.1",
        "08.1.1.1",
        "4294967296",
        "1..1",
        "",
        "[not-ip]",
        "١٢٧.0.0.1",
    ],
)
def test_names_and_impossible_numbers_are_not_ip_addresses(host):
    assert parse_ip_host(host) is None


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "127.255.0.9",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "255.255.255.255",
        "240.0.0.1",
        "::1",
        "::",
        "fd00::1",
        "fc00::5",
        "fe80::1",
        "ff02::1",
        "::ffff:127.0.0.2",
        "::ffff:10.1.2.3",
        "64:ff9b::a00:1",
        "2002:7f00:1::",
        "fec0::1",
    ],
)
def test_non_public_addresses_are_refused_with_a_reason(ip):
    ok, why = address_allowed(ipaddress.ip_address(ip))
    assert not ok and why


@pytest.mark.parametrize("ip", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(ip):
    assert address_allowed(ipaddress.ip_address(ip)) == (True, "")


@pytest.mark.parametrize(
    "url", ["http://2130706433/", "http://0x7f.1:6379/", "http://[::ffff:169.254.169.254]/", "https://10.1.1.1/x.jpg"]
)
def test_check_url_refuses_raw_private_hosts_before_any_lookup(url):
    with pytest.raises(BlockedAddressError):
        check_url(url, allow_private=False)
    assert check_url(url, allow_private=True).scheme in ("http", "https")


@pytest.mark.parametrize(
    "url", ["", "file:///etc/passwd", "gopher://x/", "http:///path", "data:image/png;base64,AA", "//example.com/x.jpg"]
)
def test_check_url_refuses_what_is_not_http(url):
    with pytest.raises(InvalidURLError):
        check_url(url, allow_private=True)


def test_the_socket_factory_refuses_before_connecting():
    factory = guarded_socket_factory()
    with pytest.raises(BlockedAddressError) as refused:
        factory((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", 80)))
    assert "loopback" in refused.value.why
    sock = factory((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 80)))
    sock.close()


def test_blocked_reason_reads_wrapped_and_merged_errors():
    inner = BlockedAddressError("loopback address 127.0.0.1")
    wrapped = OSError("Multiple exceptions: " + str(inner) + ", " + str(BlockedAddressError("loopback address ::1")))
    assert blocked_reason(inner) == "loopback address 127.0.0.1"
    assert blocked_reason(wrapped) == "loopback address 127.0.0.1"
    assert blocked_reason(OSError("connection refused")) is None


@pytest.mark.parametrize(
    "values, expected",
    [
        (["noai"], "noai"),
        (["NoImageAI"], "noimageai"),
        (["nofollow, NOINDEX"], "noindex"),
        (["  noarchive ,  noai  "], "noai"),
        (["streamcap: noimageai"], "noimageai"),
        (["StreamCap :NoAI"], "noai"),
        (["otherbot: noai"], None),
        (["googlebot: noindex", "nofollow"], None),
        (["otherbot: noai", "noimageindex"], "noimageindex"),
        (["unavailable_after: 25 Jun 2010 15:00:00 PST"], None),
        ([], None),
    ],
)
def test_x_robots_tag_directives(values, expected):
    assert robots_opt_out(values, DIRECTIVES) == expected


@pytest.mark.parametrize(
    "value, expected", [("3", 3.0), (" 0 ", 0.0), (None, None), ("soon", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)]
)
def test_retry_after_values(value, expected):
    assert retry_after_seconds(value) == expected
