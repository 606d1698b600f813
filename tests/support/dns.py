"""A DNS server on 127.0.0.1 for tests: names answer as a test says, and every query is counted.

    with DnsServer({"cat.test": ["127.0.0.1"], "gone.test": NXDOMAIN, "dead.test": SILENT}) as dns:
        cfg = DownloaderSettings(dns_servers=dns.address, ...)   # '127.0.0.1:<port>'
        dns.queries["dead.test"]                                 # A and AAAA queries that arrived

A name maps to a list of IPv4/IPv6 addresses (answered with `ttl`), or to NXDOMAIN, SERVFAIL or
SILENT (the query is read and never answered: a dead authoritative server, as a resolver sees
it). A name not in the table is NXDOMAIN. It runs dnslib's UDP server in a background thread.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections import Counter

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import DNSHandler, DNSLogger, DNSServer

NXDOMAIN, SERVFAIL, SILENT = "NXDOMAIN", "SERVFAIL", "SILENT"


class _Handler(DNSHandler):
    """dnslib's handler, except that a reply of None sends nothing (SILENT)."""

    def get_reply(self, data: bytes):
        request = DNSRecord.parse(data)
        reply = self.server.resolver.resolve(request, self)
        return reply.pack() if reply is not None else None

    def handle(self) -> None:
        data, sock = self.request
        rdata = self.get_reply(data)
        if rdata is not None:
            sock.sendto(rdata, self.client_address)


class _Table:
    def __init__(self, names: dict[str, object], ttl: int) -> None:
        self.names, self.ttl = names, ttl
        self.queries: Counter[str] = Counter()
        self.lock = threading.Lock()

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord | None:
        qname = str(request.q.qname).rstrip(".").lower()
        with self.lock:
            self.queries[qname] += 1
            rule = self.names.get(qname, NXDOMAIN)
        if rule == SILENT:
            return None
        reply = request.reply()
        if rule == NXDOMAIN:
            reply.header.rcode = RCODE.NXDOMAIN
        elif rule == SERVFAIL:
            reply.header.rcode = RCODE.SERVFAIL
        else:
            for ip in rule:  # type: ignore[union-attr]
                v6 = isinstance(ipaddress.ip_address(ip), ipaddress.IPv6Address)
                if request.q.qtype == (QTYPE.AAAA if v6 else QTYPE.A):
                    rdata = AAAA(ip) if v6 else A(ip)
                    reply.add_answer(RR(request.q.qname, request.q.qtype, rdata=rdata, ttl=self.ttl))
        return reply


class DnsServer:
    """`with DnsServer(names) as dns:` a UDP DNS server on 127.0.0.1:<free port>."""

    def __init__(self, names: dict[str, object] | None = None, ttl: int = 300) -> None:
        self.table = _Table(dict(names or {}), ttl)
        self._server: DNSServer | None = None
        self.port = 0

    @property
    def names(self) -> dict[str, object]:
        return self.table.names

    @property
    def queries(self) -> Counter[str]:
        return self.table.queries

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> DnsServer:
        self._server = DNSServer(self.table, address="127.0.0.1", port=0, handler=_Handler, logger=_Quiet())
        self.port = self._server.server.server_address[1]
        self._server.start_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.stop()
        self._server.server.server_close()


class _Quiet(DNSLogger):
    def __init__(self) -> None:
        super().__init__(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)


def unused_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
