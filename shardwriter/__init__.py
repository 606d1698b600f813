"""Rolling WebDataset tar shards, the atomic part commit, retention/GC and shard verification.

writer.PartWriter        one part's samples -> rolling shards, atomic finalize, stats file
commit.commit_part       the one-script commit (register shards, count, ack, mark done)
commit.PartClaim         who holds a part; lets finalize refuse when another worker won
registry                 sources/<id>.json and stats files in the shard dir, the shards stream
retention                disk budget backpressure (disk_pressure) and gc
verify                   read a shard safely and say what is wrong; quarantine
audit                    the accounting check behind `streamcap audit`
reconcile                rebuild the registry from the shard dir after Redis lost data
tempfiles                owner-stamped temporary files and the safe sweeper
faults                   STREAMCAP_FAULT crash points for the crash tests
cli / tools              `streamcap shards ls|verify|gc|reconcile`, `streamcap audit`
"""
