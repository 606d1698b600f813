"""The address guard in tests: 127.0.0.1 plays a public host, and names resolve as a test says.

Fetcher(cfg, resolver=MapResolver({"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]}),
        address_policy=loopback_one_is_public)
"""

from __future__ import annotations

import socket

from aiohttp.abc import AbstractResolver

from streamcap.downloader.security import address_allowed


def loopback_one_is_public(ip):
    """127.0.0.1 plays a public host; every other address is judged as in production."""
    return (True, "") if str(ip) == "127.0.0.1" else address_allowed(ip)


class MapResolver(AbstractResolver):
    """DNS as a test wants it: name -> list of answers, one list per lookup (the last repeats)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers, self.lookups = answers, []

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
        self.lookups.append(host)
        if host not in self.answers:
            raise OSError(socket.EAI_NONAME, f"{host}: Name or service not known")
        queue = self.answers[host]
        ips = queue.pop(0) if len(queue) > 1 else queue[0]
        return [
            {
                "hostname": host,
                "host": ip,
                "port": port,
                "family": socket.AF_INET6 if ":" in ip else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for ip in ips
        ]

    async def close(self) -> None:
        pass
