"""Model control modes, the restricted-protocol option and ServerMetadata, as Triton has them."""

from __future__ import annotations

import pytest

from fabric.errors import RequestError
from frontend.triton_compat import (
    PROTOCOL_GROUPS,
    Restriction,
    control_refusal,
    merge_index,
    parse_restrictions,
    restriction_problem,
    route_version,
    server_metadata_fields,
)
from frontend.wire import RequestRoute
from protos import grpc_service_pb2 as pb


@pytest.mark.parametrize("mode", ["none", "poll"])
def test_load_and_unload_refused_outside_explicit_mode_with_tritons_text(mode: str) -> None:
    assert control_refusal(mode) == (
        "explicit model load / unload is not allowed if polling is enabled"
    )


def test_explicit_mode_allows_load_and_unload() -> None:
    assert control_refusal("explicit") is None


def test_restrictions_name_every_rpc_of_each_group() -> None:
    out = parse_restrictions("model-repository,statistics:Admin-Key=s3cret; inference:k=v")
    admin = Restriction("triton-grpc-protocol-admin-key", "s3cret")
    assert {m for m, r in out.items() if r == admin} == (
        PROTOCOL_GROUPS["model-repository"] | PROTOCOL_GROUPS["statistics"]
    )
    assert out["ModelInfer"] == Restriction("triton-grpc-protocol-k", "v")
    assert "ServerLive" not in out
    assert parse_restrictions("") == {}


@pytest.mark.parametrize(
    "spec", ["model-repository", "model-repository:key", "nope:k=v", "health:k=v;health:j=w"]
)
def test_bad_restriction_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="--grpc-restricted-protocol"):
        parse_restrictions(spec)


def test_a_call_needs_the_header_and_its_value() -> None:
    r = Restriction("triton-grpc-protocol-admin-key", "s3cret")
    expected = "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'"
    assert restriction_problem(r, ()) == expected
    assert restriction_problem(r, (("triton-grpc-protocol-admin-key", "wrong"),)) == expected
    assert (
        restriction_problem(r, (("x", "y"), ("triton-grpc-protocol-admin-key", "s3cret"))) is None
    )
    assert restriction_problem(None, ()) is None


def test_route_versions_are_read_as_triton_reads_them() -> None:
    assert route_version(RequestRoute("m", "2", "")).version == "2"
    with pytest.raises(RequestError, match="failed to get model version"):
        route_version(RequestRoute("m", "abc", ""))


def test_server_metadata_says_triton_and_carries_our_name_and_version() -> None:
    name, version, extensions = server_metadata_fields("triton", "1.2.3", ("statistics",))
    assert name == "triton"
    assert version == "fabricserve 1.2.3"
    assert extensions == ["statistics", "fabricserve-1.2.3"]


def _index(*models: tuple[str, str, str, str]) -> pb.RepositoryIndexResponse:
    out = pb.RepositoryIndexResponse()
    for name, version, state, reason in models:
        out.models.add(name=name, version=version, state=state, reason=reason)
    return out


def test_index_lists_ready_unloaded_failed_and_bare_models() -> None:
    catalog = [("simple", "1", 1), ("gone", "1", 0)]
    workers = [
        _index(("mlp", "1", "UNAVAILABLE", "unloaded"), ("bad", "", "UNAVAILABLE", "bad config")),
        _index(("mlp", "1", "READY", ""), ("idle", "", "", "")),
    ]
    got = [
        (m.name, m.version, m.state, m.reason) for m in merge_index(catalog, workers, False).models
    ]
    assert got == [
        ("bad", "", "UNAVAILABLE", "bad config"),
        ("gone", "1", "UNAVAILABLE", "no live worker serves this version"),
        ("idle", "", "", ""),
        ("mlp", "1", "READY", ""),  # one worker serving it is enough
        ("simple", "1", "READY", ""),
    ]
    ready = merge_index(catalog, workers, True).models
    assert [(m.name, m.state) for m in ready] == [("mlp", "READY"), ("simple", "READY")]


def test_a_bad_restriction_is_a_flag_error(capsys: pytest.CaptureFixture[str]) -> None:
    from frontend.__main__ import main

    assert main(["--grpc-restricted-protocol", "bogus:k=v"]) == 2
    assert "unknown protocol 'bogus'" in capsys.readouterr().err
