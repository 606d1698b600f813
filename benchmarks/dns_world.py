"""A small internet in a network namespace: Zipf hostnames, a slow and partly dead DNS, throttling hosts.

    .venv/bin/python benchmarks/dns_world.py --cache-dir /tmp/bench               # 3,000 rows, 2,000 hosts
    .venv/bin/python benchmarks/dns_world.py --cache-dir /tmp/bench --no-img2dataset --rows 1500

Needs root (or user namespaces): it re-runs itself under `unshare --net --mount`, brings up
`lo`, and bind-mounts its own resolv.conf over /etc/resolv.conf, so every resolver in there
(c-ares for streamcap, glibc for img2dataset) asks the world's DNS server and nothing leaves it.

The world (fixed by --seed, the same rows for every run):
- --hosts names `h<k>.world.test`, rows drawn from them by a Zipf law (s = 1.1);
- a dnslib server on 127.0.0.53:53, answering each query after a lognormal 50-300 ms;
  15 % of the names are NXDOMAIN, 20 % never answered, the rest spread over 4 loopback
  addresses 127.0.1.1-4 where one aiohttp server (its own process) serves the images on :80;
- 5 % of the live hosts throttle: above 2 requests/s they answer 429 with Retry-After: 1.

Both tools get the same rows and the same budgets: img2dataset its `--timeout 10` and glibc's
lookups (resolv.conf: timeout:3 attempts:1), streamcap `--total-timeout 10 --retries 0
--dns-timeout 3`. A control run of streamcap uses the same rows with instant DNS and every name
alive (throttling unchanged). Printed: images/s of each run, failures by reason, the audit.
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
ZIPF_S = 1.1
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


def run_dns(hosts: int, seed: int, control: bool, stop: threading.Event) -> None:
    import math

    from dnslib import QTYPE, RCODE, RR, A, DNSRecord
    from dnslib.server import DNSHandler, DNSServer

    class Handler(DNSHandler):
        def handle(self) -> None:
            data, sock = self.request
            request = DNSRecord.parse(data)
            name = str(request.q.qname).rstrip(".").lower()
            k = int(name[1:].split(".")[0]) if name.startswith("h") and name.endswith(".world.test") else -1
            kind = "alive" if control and k >= 0 else (host_kind(k, seed) if 0 <= k < hosts else "nxdomain")
            if kind == "silent":
                return
            if not control:
                lo, hi = (math.log(v) for v in LATENCY_MS)
                ms = min(LATENCY_MS[1], max(LATENCY_MS[0], random.lognormvariate((lo + hi) / 2, (hi - lo) / 4)))
                time.sleep(ms / 1000)
            reply = request.reply()
            if kind == "nxdomain":
                reply.header.rcode = RCODE.NXDOMAIN
            elif request.q.qtype == QTYPE.A:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(SERVER_ADDRS[k % len(SERVER_ADDRS)]), ttl=300))
            sock.sendto(reply.pack(), self.client_address)

    class Quiet:
        def __getattr__(self, _name):
            return lambda *a, **k: None

    server = DNSServer(None, address=DNS_ADDR, port=53, handler=Handler, logger=Quiet())
    server.start_thread()
    stop.wait()
    server.stop()


def serve_images(image_dir: Path, hosts: int, seed: int) -> None:
    """The image servers (own process): /i/<row> on every SERVER_ADDRS:80; throttling hosts by Host header."""
    import asyncio

    from aiohttp import web

    images = [p.read_bytes() for p in sorted(image_dir.glob("*.bin"))]
    last: dict[str, collections.deque] = collections.defaultdict(collections.deque)

    async def handle(request: web.Request) -> web.Response:
        host = request.host.split(":")[0]
        k = int(host[1:].split(".")[0]) if host.startswith("h") else -1
        if 0 <= k < hosts and host_kind(k, seed) == "throttle":
            now, seen = time.monotonic(), last[host]
            while seen and now - seen[0] > 1.0:
                seen.popleft()
            if len(seen) >= THROTTLE_RATE:
                return web.Response(status=429, headers={"Retry-After": "1"})
            seen.append(now)
        await asyncio.sleep(0.02)
        return web.Response(body=images[int(request.match_info["row"]) % len(images)], content_type="image/jpeg")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/i/{row}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for addr in SERVER_ADDRS:
            await web.TCPSite(runner, addr, 80, backlog=1024).start()
        await asyncio.Event().wait()

    asyncio.run(main())


# --- the runs -------------------------------------------------------------------------------------------


def write_rows(path: Path, rows: int, hosts: int, seed: int) -> collections.Counter:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ks = rows_hosts(rows, hosts, seed)
    urls = [f"http://h{k}.world.test/i/{i}" for i, k in enumerate(ks)]
    captions = [f"A photo of thing number {i}. It was taken on a sunny day." for i in range(rows)]
    pq.write_table(pa.table({"url": urls, "caption": captions}), path)
    return collections.Counter(host_kind(k, seed) for k in ks)


def inside(args: argparse.Namespace) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    work = Path(args.cache_dir) / "dns-world"
    work.mkdir(parents=True, exist_ok=True)
    resolv = work / "resolv.conf"
    resolv.write_text(f"nameserver {DNS_ADDR}\noptions timeout:3 attempts:1\n")
    subprocess.run(["mount", "--bind", str(resolv), "/etc/resolv.conf"], check=True)
    image_dir = work.parent / f"images-{bench.IMAGES_VERSION}"
    images = bench.make_images(image_dir, 64)
    parquet = work / "rows.parquet"
    mix = write_rows(parquet, args.rows, args.hosts, args.seed)
    print(f"rows {args.rows} over {args.hosts} hosts (Zipf {ZIPF_S}); rows by host kind: {dict(mix)}", flush=True)
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(images[0].parent), *_world(args)])
    results = []
    try:
        time.sleep(2)
        for label, control in (("streamcap", False), ("streamcap control (instant DNS, all alive)", True)):
            out = work / ("control" if control else "world")  # each run's shards and log kept apart
            results.append(
                _with_dns(args, control, lambda: bench.run_streamcap(parquet, out, 256, STREAMCAP_ARGS, ""))  # noqa: B023
            )
            results[-1]["tool"] = label
        if args.img2dataset:
            exe = bench.ensure_img2dataset(Path(args.cache_dir))
            results.append(_with_dns(args, False, lambda: bench.run_img2dataset(exe, parquet, work, 64, args.rows)))
    finally:
        server.terminate()
        server.wait()
    for r in results:
        line = f"{r['tool']:<46} exit {r['code']} {r['successes']:>6} images in {r['wall']:6.1f} s = {r['successes'] / r['wall']:6.1f} images/s"
        print(line)
        print(f"    failures: {json.dumps(dict(collections.Counter(r['reasons']).most_common(8)))}")
        if "audit" in r:
            a = r["audit"]
            print(f"    audit: lost {a.get('lost')}, duplicates {a.get('duplicates')}, parts {a.get('parts')}")
    if len(results) == 3:
        print(
            f"streamcap / img2dataset: {results[0]['successes'] / results[0]['wall'] / (results[2]['successes'] / results[2]['wall']):.2f}x"
        )


def _with_dns(args: argparse.Namespace, control: bool, run):
    stop = threading.Event()
    thread = threading.Thread(target=run_dns, args=(args.hosts, args.seed, control, stop), daemon=True)
    thread.start()
    time.sleep(0.5)
    try:
        return run()
    finally:
        stop.set()
        thread.join(5)


def _world(args: argparse.Namespace) -> list[str]:
    return ["--hosts", str(args.hosts), "--seed", str(args.seed)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache-dir", default="/tmp/streamcap-bench")
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--hosts", type=int, default=2000)
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
