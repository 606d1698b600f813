"""A small internet in a network namespace: Zipf hostnames, a slow and partly dead DNS, throttling hosts.

    .venv/bin/python benchmarks/dns_world.py --cache-dir /tmp/bench               # 12,000 rows, ~6,800 hosts
    .venv/bin/python benchmarks/dns_world.py --cache-dir /tmp/bench --no-img2dataset --rows 3000 --hosts 10000

Needs root (or user namespaces): it re-runs itself under `unshare --net --mount`, brings up
`lo`, and bind-mounts its own resolv.conf over /etc/resolv.conf, so every resolver in there
(c-ares for streamcap, glibc for img2dataset) asks the world's DNS server and nothing leaves it.

The world (fixed by --seed, the same rows for every run):
- --hosts names `h<k>.world.test`, rows drawn from them by a Zipf law (s = 0.8): a few hosts
  with hundreds of rows, most of the hosts hit with one row;
- a dnslib server on 127.0.0.53:53, answering each query after a lognormal 50-300 ms;
  15 % of the names are NXDOMAIN, 20 % never answered, the rest spread over 4 loopback
  addresses 127.0.1.1-4 where one aiohttp server (its own process) serves the images on :80;
- 5 % of the live hosts throttle: above 2 requests/s they answer 429 with Retry-After: 1.

Both tools get the same rows and the same HTTP budget: img2dataset its `--timeout 10` and glibc's
lookups at glibc's defaults (timeout:5 attempts:2), streamcap `--total-timeout 10 --retries 0
--dns-timeout 3`. A control run of streamcap uses the same rows with instant DNS and every name
alive (throttling unchanged). Printed per run: successful images/s, rows finished per second
(a row that fails for good is finished), failures by reason and by the kind of host they hit
(a live host's row failing for DNS would be streamcap's fault), the audit, and what the
throttling hosts saw: requests, 429s, and the most requests one of them got in any second.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import download as bench  # noqa: E402

DNS_ADDR = "127.0.0.53"
SERVER_ADDRS = tuple(f"127.0.1.{i}" for i in range(1, 5))
NXDOMAIN_SHARE, SILENT_SHARE, THROTTLE_SHARE = 0.15, 0.20, 0.05
THROTTLE_RATE = 2.0  # requests/s a throttling host answers; more get 429 + Retry-After: 1
LATENCY_MS = (50, 300)
ZIPF_S = 0.8  # over 40,000 names, 12,000 rows hit ~6,800 hosts, ~5,300 of them once; the top one 332 times
SO_RCVBUFFORCE = 33  # Linux's; Python's socket module does not name it
STREAMCAP_ARGS = "--connect-timeout 10 --read-timeout 10 --total-timeout 10 --retries 0 --dns-timeout 3"


def host_kind(k: int, seed: int) -> str:
    x = random.Random(f"{seed}:{k}").random()
    if x < NXDOMAIN_SHARE:
        return "nxdomain"
    if x < NXDOMAIN_SHARE + SILENT_SHARE:
        return "silent"
    return "throttle" if x < NXDOMAIN_SHARE + SILENT_SHARE + THROTTLE_SHARE else "alive"


def rows_hosts(rows: int, hosts: int, seed: int) -> list[int]:
    weights = [1 / (k**ZIPF_S) for k in range(1, hosts + 1)]
    cum, total = [], 0.0
    for w in weights:
        total += w
        cum.append(total)
    rng = random.Random(seed)
    return [bisect.bisect(cum, rng.random() * total) for _ in range(rows)]


# --- the world's servers (inside the namespace) -------------------------------------------------------


def run_dns(hosts: int, seed: int, control: bool, stop: threading.Event, counts: collections.Counter) -> None:
    """The world's DNS server until `stop`: one asyncio loop (a thread per query, as dnslib's own
    server does, would make the server the bottleneck), a 4 MiB receive buffer, and each answer
    sent after its lognormal latency. `counts` gets the queries by kind of name."""
    import asyncio
    import math
    import socket

    from dnslib import QTYPE, RCODE, RR, A, DNSRecord

    lo, hi = (math.log(v) for v in LATENCY_MS)

    class Server(asyncio.DatagramProtocol):
        def connection_made(self, transport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr) -> None:
            request = DNSRecord.parse(data)
            name = str(request.q.qname).rstrip(".").lower()
            k = int(name[1:].split(".")[0]) if name.startswith("h") and name.endswith(".world.test") else -1
            kind = "alive" if control and k >= 0 else (host_kind(k, seed) if 0 <= k < hosts else "nxdomain")
            counts[kind] += 1
            if kind == "silent":
                return
            reply = request.reply()
            if kind == "nxdomain":
                reply.header.rcode = RCODE.NXDOMAIN
            elif request.q.qtype == QTYPE.A:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(SERVER_ADDRS[k % len(SERVER_ADDRS)]), ttl=300))
            delay = 0.0
            if not control:
                ms = random.lognormvariate((lo + hi) / 2, (hi - lo) / 4)
                delay = min(LATENCY_MS[1], max(LATENCY_MS[0], ms)) / 1000
            asyncio.get_running_loop().call_later(delay, self.transport.sendto, reply.pack(), addr)

    async def serve() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)  # root in our namespace: past rmem_max
        sock.bind((DNS_ADDR, 53))
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Server, sock=sock)
        counts["serving"] = 1
        try:
            while not stop.is_set():
                await asyncio.sleep(0.2)
        finally:
            transport.close()

    asyncio.run(serve())


def _most_in_a_second(times: list[float]) -> int:
    """The most of `times` (in order) within any one-second window."""
    most, first = 0, 0
    for i, t in enumerate(times):
        while t - times[first] >= 1.0:
            first += 1
        most = max(most, i - first + 1)
    return most


def serve_images(image_dir: Path, hosts: int, seed: int) -> None:
    """The image servers (own process): /i/<row> on every SERVER_ADDRS:80; throttling hosts by Host header."""
    import asyncio

    from aiohttp import web

    images = [p.read_bytes() for p in sorted(image_dir.glob("*.bin"))]
    last: dict[str, collections.deque] = collections.defaultdict(collections.deque)
    offered: dict[str, list[float]] = collections.defaultdict(list)  # every request to a throttling host
    refused = collections.Counter()

    async def handle(request: web.Request) -> web.Response:
        host = request.host.split(":")[0]
        k = int(host[1:].split(".")[0]) if host.startswith("h") else -1
        if 0 <= k < hosts and host_kind(k, seed) == "throttle":
            now, seen = time.monotonic(), last[host]
            offered[host].append(now)
            while seen and now - seen[0] > 1.0:
                seen.popleft()
            if len(seen) >= THROTTLE_RATE:
                refused[host] += 1
                return web.Response(status=429, headers={"Retry-After": "1"})
            seen.append(now)
        await asyncio.sleep(0.02)
        return web.Response(body=images[int(request.match_info["row"]) % len(images)], content_type="image/jpeg")

    async def throttle_report(_request: web.Request) -> web.Response:
        """What the throttling hosts saw since the last report (then forgotten)."""
        busiest = max((_most_in_a_second(times) for times in offered.values()), default=0)
        report = {
            "hosts": len(offered),
            "requests": sum(map(len, offered.values())),
            "refused_429": sum(refused.values()),
            "most_requests_in_a_second": busiest,
        }
        offered.clear()
        refused.clear()
        return web.json_response(report)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/i/{row}", handle)
        app.router.add_get("/throttle-report", throttle_report)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for addr in SERVER_ADDRS:
            await web.TCPSite(runner, addr, 80, backlog=1024).start()
        await asyncio.Event().wait()

    asyncio.run(main())


# --- the runs -------------------------------------------------------------------------------------------


def write_rows(path: Path, rows: int, hosts: int, seed: int) -> tuple[collections.Counter, collections.Counter]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ks = rows_hosts(rows, hosts, seed)
    urls = [f"http://h{k}.world.test/i/{i}" for i, k in enumerate(ks)]
    captions = [f"A photo of thing number {i}. It was taken on a sunny day." for i in range(rows)]
    pq.write_table(pa.table({"url": urls, "caption": captions}), path)
    return collections.Counter(host_kind(k, seed) for k in ks), collections.Counter(ks)


def inside(args: argparse.Namespace) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    work = Path(args.cache_dir) / "dns-world"
    work.mkdir(parents=True, exist_ok=True)
    resolv = work / "resolv.conf"
    resolv.write_text(f"nameserver {DNS_ADDR}\noptions timeout:5 attempts:2\n")  # glibc's defaults, spelled out
    subprocess.run(["mount", "--bind", str(resolv), "/etc/resolv.conf"], check=True)
    image_dir = work.parent / f"images-{bench.IMAGES_VERSION}"
    images = bench.make_images(image_dir, 64)
    parquet = work / "rows.parquet"
    mix, hit = write_rows(parquet, args.rows, args.hosts, args.seed)
    once = sum(1 for n in hit.values() if n == 1)
    print(
        f"rows {args.rows} over {len(hit)} hostnames ({once} of them with one row, the busiest with "
        f"{max(hit.values())}; Zipf {ZIPF_S} over {args.hosts} names); rows by host kind: {dict(mix)}",
        flush=True,
    )
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(images[0].parent), *_world(args)])
    results = []
    try:
        time.sleep(2)
        for label, control in (("streamcap", False), ("streamcap control (instant DNS, all alive)", True)):
            out = work / ("control" if control else "world")  # each run's shards and log kept apart
            results.append(
                _with_dns(args, control, lambda: bench.run_streamcap(parquet, out, 256, STREAMCAP_ARGS, ""))  # noqa: B023
            )
            results[-1] |= {
                "tool": label,
                "throttling": _throttle_report(),
                "by_kind": _failures_by_kind(out, args, control),
            }
        if args.img2dataset:
            exe = bench.ensure_img2dataset(Path(args.cache_dir))
            results.append(_with_dns(args, False, lambda: bench.run_img2dataset(exe, parquet, work, 64, args.rows)))
            results[-1]["throttling"] = _throttle_report()
    finally:
        server.terminate()
        server.wait()
    for r in results:
        print(
            f"{r['tool']:<44} exit {r['code']} {r['successes']:>6} images in {r['wall']:6.1f} s = "
            f"{r['successes'] / r['wall']:6.1f} images/s; rows finished {args.rows / r['wall']:6.1f}/s"
        )
        print(f"    failures: {json.dumps(dict(collections.Counter(r['reasons']).most_common(8)))}")
        for kind, reasons in sorted(r.get("by_kind", {}).items()):
            print(f"    failed rows of {kind} hosts: {json.dumps(dict(reasons.most_common(6)))}")
        print(f"    DNS queries (A and AAAA) by kind of name: {json.dumps(dict(r['dns_queries'].most_common()))}")
        t = r["throttling"]
        print(
            f"    throttling hosts: {t['requests']} requests to {t['hosts']} of them, {t['refused_429']} answered 429, "
            f"at most {t['most_requests_in_a_second']} to one host in a second (limit {THROTTLE_RATE:g})"
        )
        if "audit" in r:
            a = r["audit"]
            print(f"    audit: lost {a.get('lost')}, duplicates {a.get('duplicates')}, parts {a.get('parts')}")
    world, control = results[0], results[1]
    print(
        f"streamcap rows finished per second: {100 * control['wall'] / world['wall']:.0f} % of its control "
        f"({args.rows / world['wall']:.1f}/s vs {args.rows / control['wall']:.1f}/s)"
    )
    if len(results) == 3:
        i2d = results[2]
        print(
            f"streamcap / img2dataset: {world['successes'] / world['wall'] / (i2d['successes'] / i2d['wall']):.2f}x "
            f"successful images/s; successes {world['successes']} vs {i2d['successes']} "
            f"({100 * (world['successes'] - i2d['successes']) / max(1, i2d['successes']):+.1f} %)"
        )


def _throttle_report() -> dict:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # nothing but the world in here
    with opener.open(f"http://{SERVER_ADDRS[0]}/throttle-report", timeout=10) as reply:
        return json.loads(reply.read())


def _failures_by_kind(out: Path, args: argparse.Namespace, control: bool) -> dict[str, collections.Counter]:
    """streamcap's failed rows by the kind of host they were on, and reason (with its detail)."""
    from streamcap.shardwriter.registry import load_part_stats

    by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for stats in load_part_stats(out / "streamcap-256" / "shards").values():
        for f in stats.failures:
            host = f.url.split("/")[2]
            k = int(host[1:].split(".")[0])
            kind = "alive" if control else host_kind(k, args.seed)
            by_kind[kind][f"{f.reason}: {f.detail}"[:70]] += 1
    return by_kind


def _with_dns(args: argparse.Namespace, control: bool, run) -> dict:
    stop, counts = threading.Event(), collections.Counter()
    thread = threading.Thread(target=run_dns, args=(args.hosts, args.seed, control, stop, counts), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not counts["serving"]:
        if time.monotonic() > deadline or not thread.is_alive():
            raise SystemExit("the world's DNS server did not start (see above)")
        time.sleep(0.05)
    del counts["serving"]
    try:
        return run() | {"dns_queries": counts}
    finally:
        stop.set()
        thread.join(5)


def _world(args: argparse.Namespace) -> list[str]:
    return ["--hosts", str(args.hosts), "--seed", str(args.seed)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache-dir", default="/tmp/streamcap-bench")
    p.add_argument("--rows", type=int, default=12000)
    p.add_argument("--hosts", type=int, default=40000, help="names rows are drawn from (Zipf); fewer are hit")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--no-img2dataset", dest="img2dataset", action="store_false")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--serve", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve_images(Path(args.serve), args.hosts, args.seed)
    elif args.inside:
        inside(args)
    else:
        if args.img2dataset:  # installed out here: nothing in the namespace reaches PyPI
            bench.ensure_img2dataset(Path(args.cache_dir))
        argv = [sys.executable, __file__, "--inside", *sys.argv[1:]]
        raise SystemExit(subprocess.run(["unshare", "--net", "--mount", *argv], env=os.environ).returncode)


if __name__ == "__main__":
    main()
