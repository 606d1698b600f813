"""The demo spells its services' command lines as {flag: value} dicts."""

from pathlib import Path

from streamcap.demo.processes import flags


def test_flags_pairs_values_keeps_switches_and_drops_unset():
    words = flags({"--max-steps": 600, "--no-pretrained": True, "--seed": None, "--json": False, "--out": Path("a")})
    assert words == ["--max-steps", "600", "--no-pretrained", "--out", "a"]
