"""The download service: URL sources, part claiming, async fetching, image processing.

sources      parquet (by row group) / csv / tsv / jsonl readers
enqueue      `streamcap enqueue`: a source split into parts, once
claims       the `parts` stream from a downloader's side: claim, renew, release, dead-letter
security     which URLs and addresses may be fetched (checked at connection time)
fetch        aiohttp fetching: limits, retries, redirects, size caps, opt-out
imageproc    bytes -> stored image, or a failure reason
imagepool    imageproc in worker processes that may crash
part         one part: rows -> samples and failures -> shards (shardwriter)
service      `streamcap download`: the worker loop, heartbeats, graceful stop
livestats    a worker's counters and the rates its heartbeat shows
supervisor   `--processes N`
config, cli  the settings and the two commands
"""
