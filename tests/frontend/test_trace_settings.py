"""frontend.trace_settings: the per-call sampling decision, and the TraceSetting RPC with
Triton's semantics (model settings inherit the global ones, clearing, errors)."""

from __future__ import annotations

import pytest

from fabric import errors
from fabric.errors import RequestError
from fabric.tracing import ExportPlan
from frontend.trace_settings import TraceSettings, Values, answer, initial_values
from protos import grpc_service_pb2 as pb

ON = ExportPlan(("otlp",))


def request(model: str = "", **settings: list[str]) -> pb.TraceSettingRequest:
    req = pb.TraceSettingRequest(model_name=model)
    for key, values in settings.items():
        req.settings[key].value.extend(values)
    return req


def read(response: pb.TraceSettingResponse) -> dict[str, list[str]]:
    return {k: list(v.value) for k, v in response.settings.items()}


def traced(settings: TraceSettings, calls: int, model: str = "m") -> list[int]:
    """Which of ``calls`` root calls (no caller context) are traced, numbered from 1."""
    return [n for n in range(1, calls + 1) if settings.decide(model, None)]


DEFAULTS = {
    "trace_level": ["TIMESTAMPS"],
    "trace_rate": ["1"],
    "trace_count": ["-1"],
    "log_frequency": ["0"],
}


# ---- start values from the OpenTelemetry sampler ---------------------------------------------


@pytest.mark.parametrize(
    ("sampler", "arg", "expected"),
    [
        ("parentbased_always_on", "", Values()),
        ("always_on", "", Values()),
        ("always_off", "", Values(level="OFF")),
        ("parentbased_always_off", "", Values(level="OFF")),
        ("traceidratio", "0.01", Values(rate=100)),
        ("parentbased_traceidratio", "0.3", Values(rate=3)),
        ("traceidratio", "0", Values(level="OFF")),
        ("traceidratio", "", Values()),
    ],
)
def test_initial_values_from_the_sampler(sampler: str, arg: str, expected: Values) -> None:
    assert initial_values(ExportPlan(("otlp",), "grpc", sampler, arg)) == expected


def test_without_an_exporter_nothing_is_traced_and_nothing_can_be_changed() -> None:
    settings = TraceSettings.from_plan(ExportPlan(()))
    assert traced(settings, 10) == []
    assert read(answer(settings, request(), {"m"}))["trace_level"] == ["OFF"]
    with pytest.raises(RequestError) as exc:
        answer(settings, request(trace_rate=["1"]), {"m"})
    assert exc.value.code == errors.FAILED_PRECONDITION
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in exc.value.message


# ---- the decision -----------------------------------------------------------------------------


def test_rate_traces_every_nth_call() -> None:
    settings = TraceSettings(Values(rate=4))
    assert traced(settings, 12) == [4, 8, 12]


def test_count_stops_tracing_and_counts_down() -> None:
    settings = TraceSettings(Values(count=2))
    assert traced(settings, 5) == [1, 2]
    assert settings.values()["trace_count"] == ["0"]


def test_parent_based_follows_the_callers_sampled_flag() -> None:
    settings = TraceSettings(Values(rate=1000), parent_based=True)
    assert settings.decide("m", True)
    assert not settings.decide("m", False)
    assert traced(settings, 999) == []  # root calls still follow the rate


def test_not_parent_based_applies_the_rate_to_every_call() -> None:
    settings = TraceSettings(Values(rate=2), parent_based=False)
    assert [settings.decide("m", True) for _ in range(4)] == [False, True, False, True]


def test_off_traces_nothing_not_even_a_sampled_caller() -> None:
    settings = TraceSettings(Values(level="OFF"))
    assert not settings.decide("m", True)
    assert traced(settings, 5) == []


def test_a_models_rate_and_count_are_its_own() -> None:
    settings = TraceSettings(Values(rate=1))
    settings.update("slow", {"trace_rate": ["3"], "trace_count": ["1"]})
    assert traced(settings, 9, model="slow") == [3]
    assert traced(settings, 3, model="other") == [1, 2, 3]
    assert settings.values("slow")["trace_count"] == ["0"]
    assert settings.values()["trace_count"] == ["-1"]


def test_a_model_without_its_own_count_spends_the_global_one() -> None:
    settings = TraceSettings(Values())
    settings.update("", {"trace_count": ["3"]})
    settings.update("a", {"trace_rate": ["1"]})
    assert traced(settings, 2, model="a") == [1, 2]
    assert traced(settings, 2, model="b") == [1]
    assert settings.values("a")["trace_count"] == ["0"]


# ---- the RPC, as Triton's trace endpoint tests drive it ---------------------------------------


def test_reading_global_and_model_settings() -> None:
    settings = TraceSettings(Values())
    assert read(answer(settings, request(), {"simple"})) == DEFAULTS
    assert read(answer(settings, request("simple"), {"simple"})) == DEFAULTS


def test_model_settings_follow_global_changes_they_do_not_override() -> None:
    settings = TraceSettings(Values())
    model = read(answer(settings, request("simple", trace_rate=["12"]), {"simple"}))
    assert model == {**DEFAULTS, "trace_rate": ["12"]}
    glob = read(answer(settings, request(trace_level=["OFF"], trace_rate=["56"]), {"simple"}))
    assert glob == {**DEFAULTS, "trace_level": ["OFF"], "trace_rate": ["56"]}
    model = read(answer(settings, request("simple"), {"simple"}))
    assert model == {**DEFAULTS, "trace_level": ["OFF"], "trace_rate": ["12"]}
    assert not settings.decide("simple", True)  # the global OFF reaches the model


def test_clearing_restores_start_values_and_inheritance() -> None:
    settings = TraceSettings(Values(rate=100))
    answer(settings, request("simple", trace_rate=["12"], log_frequency=["34"]), {"simple"})
    answer(settings, request(trace_rate=["56"], trace_count=["78"], trace_level=["OFF"]), set())
    cleared = read(answer(settings, request(trace_rate=[], trace_count=[]), set()))
    assert cleared == {**DEFAULTS, "trace_level": ["OFF"], "trace_rate": ["100"]}
    model = read(answer(settings, request("simple", trace_rate=[], trace_level=[]), {"simple"}))
    assert model == {
        **DEFAULTS,
        "trace_level": ["OFF"],
        "trace_rate": ["100"],
        "log_frequency": ["34"],
    }
    model = read(answer(settings, request("simple", log_frequency=[]), {"simple"}))
    assert model == read(answer(settings, request(), set()))


def test_trace_file_cannot_be_set_but_may_be_cleared() -> None:
    settings = TraceSettings(Values())
    with pytest.raises(RequestError) as exc:
        answer(settings, request(trace_file=["/tmp/trace.json"]), set())
    assert exc.value.code == errors.INVALID_ARGUMENT
    assert "trace_file is not supported" in exc.value.message
    assert read(answer(settings, request(trace_file=[]), set())) == DEFAULTS


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"trace_level": ["TENSORS"]}, "TENSORS is not supported"),
        ({"trace_level": ["LOUD"]}, "unknown trace_level 'LOUD'"),
        ({"trace_level": ["OFF", "TIMESTAMPS"]}, "OFF cannot be combined"),
        ({"trace_rate": ["0"]}, "trace_rate must be >= 1"),
        ({"trace_rate": ["ten"]}, "trace_rate must be an integer"),
        ({"trace_rate": ["1", "2"]}, "takes one value"),
        ({"trace_count": ["-2"]}, "trace_count must be >= -1"),
        ({"log_frequency": ["-1"]}, "log_frequency must be >= 0"),
        ({"trace_mode": ["triton"]}, "unknown trace setting 'trace_mode'"),
    ],
)
def test_bad_values_are_refused_and_change_nothing(
    settings: dict[str, list[str]], says: str
) -> None:
    state = TraceSettings(Values())
    with pytest.raises(RequestError) as exc:
        answer(state, request(**{"log_frequency": ["7"], **settings}), set())
    assert exc.value.code == errors.INVALID_ARGUMENT
    assert says in exc.value.message
    assert read(answer(state, request(), set())) == DEFAULTS


def test_unknown_model() -> None:
    settings = TraceSettings(Values())
    for req in (request("nope"), request("nope", trace_rate=["2"])):
        with pytest.raises(RequestError) as exc:
            answer(settings, req, {"simple"})
        assert exc.value.code == errors.NOT_FOUND
        assert exc.value.message == "Request for unknown model : nope"


def test_trace_level_timestamps_turns_tracing_back_on() -> None:
    settings = TraceSettings(Values(level="OFF"))
    answer(settings, request(trace_level=["TIMESTAMPS"]), set())
    assert traced(settings, 2) == [1, 2]
