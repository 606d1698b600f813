import pytest

from streamcap import bus


def test_every_architecture_key_lives_under_the_namespace():
    keys = bus.Keys("ns1")
    assert keys.sources == "ns1:sources"
    assert keys.parts == "ns1:parts"
    assert keys.parts_dead == "ns1:parts:dead"
    assert keys.parts_done == "ns1:parts:done"
    assert keys.shards == "ns1:shards"
    assert keys.stats == "ns1:stats"
    assert keys.checkpoints == "ns1:checkpoints"
    assert keys.evals == "ns1:evals"
    assert keys.heartbeat("downloader", "host-1") == "ns1:hb:downloader:host-1"
    assert keys.heartbeat_pattern("trainer") == "ns1:hb:trainer:*"


def test_schema_lists_each_key_once_and_only_in_its_namespace():
    schema = bus.Keys("abc").schema()
    names = [key for key, _type in schema.values()]
    assert len(names) == len(set(names))
    assert all(name.startswith("abc:") for name in names)
    assert {t for _k, t in schema.values()} <= {"stream", "hash", "set"}


def test_two_namespaces_share_no_key():
    a, b = bus.Keys("a").schema(), bus.Keys("b").schema()
    assert not {k for k, _ in a.values()} & {k for k, _ in b.values()}


def test_messages_roundtrip_with_version():
    fields = bus.encode({"source": "s", "part": 3, "nested": {"x": [1, 2]}})
    assert set(fields) == {"json"}
    assert bus.decode(fields) == {"v": bus.MESSAGE_VERSION, "source": "s", "part": 3, "nested": {"x": [1, 2]}}


@pytest.mark.parametrize("fields", [None, {}, {"json": "{not json"}, {"json": '{"v": 999}'}, {"pickle": "x"}])
def test_foreign_messages_are_rejected_with_a_reason(fields):
    with pytest.raises(bus.MessageError):
        bus.decode(fields)
