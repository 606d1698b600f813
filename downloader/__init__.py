"""The download service: URL sources, part claiming, async fetching, image processing.

sources      parquet (by row group) / csv / tsv / jsonl readers
enqueue      `streamcap enqueue`: a source split into parts, once
claims       the `parts` stream from a downloader's side: claim, renew, release, dead-letter
security     which URLs and addresses may be fetched (checked at connection time)
fetch        aiohttp fetching: limits, retries, redirects, size caps, opt-out
imageproc    bytes -> stored image, or a failure reason
imagepool    imageproc in worker processes that may crash
part         one part: rows -> samples and failures -> shards (shardwriter)
service      `streamcap download`: the worker, put together from the next four, and its claim loop
pausing      the worker's state; pauses for the disk budget, a failing environment, Redis outages
claiming     a claimed entry taken in or dead-lettered; a part handed back (strike or uncounted)
inflight     the parts running at once: room for more, run, commit, keep alive, drain at a stop
heartbeat    the worker's heartbeat record and the loop that refreshes it with the keep-alives
stragglers   a part's slow tail deferred to a retry part
livestats    a worker's counters and the rates its heartbeat shows
supervisor   `--processes N`
config, cli  the settings and the two commands
"""
