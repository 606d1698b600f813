"""Support code of the tests, one module per thing it holds (fixtures are registered as a plugin
by tests/conftest.py; everything else is imported from its module):

    fixtures    redis_server, redis_url, keys, r, image_host, fleets
    http        ImageServer: the one loopback HTTP server (well-behaved and hostile routes)
    addresses   MapResolver and loopback_one_is_public: the address guard in tests
    images      the one image maker: photo, jpeg_bytes, encode, png_claiming, save_image
    pipeline    enqueue_rows, paced_rows, wait_until, outcomes, final_audit
    fleet       Fleet and download(): real `streamcap download` (and train) processes
    parts       parts claimed, written and committed without downloading (`python -m tests.support.parts`)
    evalsets    tiny evaluation sets and checkpoints
    timing      scale(), scaled(), Deadline, wait(): every bound a test waits against, scaled to the
                machine's load (the pytest-timeout of each test too, in tests/conftest.py)

The Redis proxy that misbehaves is harness code the chaos benchmark drives too: it lives in
benchmarks/redis_proxy.py (benchmarks never import tests; tests may import benchmarks).
"""
