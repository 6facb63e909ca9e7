"""The catalog's shared memory domain per model version (``fabric.shm_transport``): the one
domain all of the version's live workers announced, "" once any of them is elsewhere or has
the transport off, back to the domain when that worker leaves; every change reaches the
frontends (a new catalog generation)."""

from __future__ import annotations

from broker.registry import Registry
from fabric.protocol import ModelAnnouncement

HERE = "0123456789abcdef"
THERE = "fedcba9876543210"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def announce(registry: Registry, worker: bytes, domain: str, version: str = "1") -> None:
    registry.announce(worker, [ModelAnnouncement("m", version, b"cfg", 4, 0, domain)])


def domains(registry: Registry) -> dict[tuple[str, str], str]:
    return {(e.name, e.version): e.shm_domain for e in registry.catalog().models}


def test_a_version_has_a_domain_only_while_all_its_workers_share_it() -> None:
    registry = Registry(Clock(), 1.0, 3)
    announce(registry, b"w1", HERE)
    assert domains(registry) == {("m", "1"): HERE}
    announce(registry, b"w2", HERE)
    assert domains(registry) == {("m", "1"): HERE}

    generation = registry.generation
    announce(registry, b"w3", "")  # the transport off there: payloads must go inline
    assert domains(registry) == {("m", "1"): ""}
    assert registry.generation != generation

    generation = registry.generation
    registry.remove(b"w3")
    assert domains(registry) == {("m", "1"): HERE}
    assert registry.generation != generation

    announce(registry, b"w4", THERE)  # another host
    assert domains(registry) == {("m", "1"): ""}


def test_each_version_has_its_own_domain() -> None:
    registry = Registry(Clock(), 1.0, 3)
    announce(registry, b"w1", HERE, "1")
    announce(registry, b"w2", THERE, "2")
    announce(registry, b"w3", "", "3")
    assert domains(registry) == {("m", "1"): HERE, ("m", "2"): THERE, ("m", "3"): ""}
