"""The LogSettings RPC (Triton's logging extension): read and change this frontend's log levels
and format at run time.

Settings and their types are Triton's: ``log_file`` (string), ``log_info``, ``log_warning``,
``log_error`` (bool), ``log_verbose_level`` (uint32; > 0 lets DEBUG lines through) and
``log_format`` (string: Triton's ``default`` and ``ISO8601``, and ``json`` for one JSON
object per line). A value of the wrong type is INVALID_ARGUMENT with Triton's words
(``expect boolean for 'log_info'``); a setting Triton does not know is ignored, as Triton
ignores it. Unlike Triton, a request is checked whole before anything changes, so a bad value
leaves every setting as it was.

``log_file`` cannot be changed: the tiers log to stderr, for the supervisor or container
runtime to collect, and a network call must not choose a path this process writes to. It
reads ``""`` (the console) and accepts ``""``.

Only the frontend that answers the call changes; other replicas and tiers keep their levels.
"""

from __future__ import annotations

import logging

import grpc

from fabric.logs import LevelSwitches, LogControl, configure_logging, installed_control
from protos import grpc_service_pb2 as pb

logger = logging.getLogger(__name__)

_BOOLS = ("log_info", "log_warning", "log_error")
_KIND_WORDS = {"bool_param": "boolean", "uint32_param": "int32", "string_param": "string"}
_FORMATS = ("default", "ISO8601", "json")


class SettingError(ValueError):
    """A request LogSettings refuses as a whole; the message is Triton's where it has one."""


def _control() -> LogControl:
    control = installed_control()
    if control is None:  # started without fabric.cli (an in-process test): take over logging
        control = configure_logging(logging.getLevelName(logging.getLogger().level), "frontend")
    return control


def apply_settings(
    control: LogControl, settings: dict[str, pb.LogSettingsRequest.SettingValue]
) -> None:
    """Check every setting, then apply them all; SettingError when one is refused."""
    switches = LevelSwitches(**vars(control.switches))
    log_format = control.log_format

    def param(name: str, kind: str) -> pb.LogSettingsRequest.SettingValue:
        given = settings[name]
        if given.WhichOneof("parameter_choice") != kind:
            raise SettingError(f"expect {_KIND_WORDS[kind]} for '{name}'")
        return given

    # A network call must not choose a path this process writes to.
    if "log_file" in settings and param("log_file", "string_param").string_param:
        raise SettingError("log_file cannot be changed at run time: this server logs to stderr")
    for name in _BOOLS:
        if name in settings:
            setattr(switches, name.removeprefix("log_"), param(name, "bool_param").bool_param)
    if "log_verbose_level" in settings:
        switches.verbose = param("log_verbose_level", "uint32_param").uint32_param
    if "log_format" in settings:
        fmt = param("log_format", "string_param").string_param
        if fmt not in _FORMATS:
            raise SettingError(f"invalid argument for log_format, got: {fmt}")
        log_format = fmt
    if log_format != control.log_format:
        control.set_format(log_format)
    for field in ("info", "warning", "error", "verbose"):
        setattr(control.switches, field, getattr(switches, field))
    control.apply_levels()


def current_settings(control: LogControl) -> pb.LogSettingsResponse:
    out = pb.LogSettingsResponse()
    s = control.switches
    out.settings["log_file"].string_param = ""
    out.settings["log_info"].bool_param = s.info
    out.settings["log_warning"].bool_param = s.warning
    out.settings["log_error"].bool_param = s.error
    out.settings["log_verbose_level"].uint32_param = s.verbose
    out.settings["log_format"].string_param = (
        "default" if control.log_format == "text" else control.log_format
    )
    return out


async def serve_log_settings(
    request: pb.LogSettingsRequest, context: grpc.aio.ServicerContext
) -> pb.LogSettingsResponse:
    control = _control()
    if request.settings:
        try:
            apply_settings(control, dict(request.settings))
        except SettingError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        logger.info("log settings changed: %s", ", ".join(sorted(request.settings)))
    return current_settings(control)
