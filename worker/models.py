"""The model versions a worker serves: load (and warm up) before announcing, unload after
in-flight requests finish, and follow the repository on disk when polled.

Mutations happen on the worker's control thread; the I/O thread only reads ``served`` and
``latest``, which are replaced whole (never changed in place) so a reader sees a consistent map.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fabric import errors, names
from fabric import triton_errors as texts
from fabric.errors import RequestError
from fabric.protocol import ModelAnnouncement, PeerId
from fabric.versions import version_sort_key
from protos import grpc_service_pb2 as pb

from .devices import PlacementError, WorkerDevices, instance_groups, place_instances
from .gpu_faults import DeviceHealth
from .gpu_warmup import PREPARE_TIMEOUT_S, on_gpu, owned_devices, preparation
from .loaders import LoadedModel, ModelLoadError, load_model
from .model_config import CONFIG_FILENAME, ModelConfigError, model_config_bytes
from .overrides import LoadOverride, stage
from .raw_wire import RawParts
from .repository import ModelSource, scan_model
from .runtime import CancelBoard, Inbound, ModelInstance, SendAck, SendReply
from .sequences import SequenceTable
from .stats import ModelStats
from .warmup import default_warm_up, run_config_warmup

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (model name, version)


@dataclass
class ServedVersion:
    model: LoadedModel
    inbox: queue.SimpleQueue[object]
    stats: ModelStats
    capacity: int
    instances: list[ModelInstance] = field(default_factory=list)
    cancelled: CancelBoard = field(default_factory=CancelBoard)
    pending: int = 0  # requests handed to the instances and not yet answered
    max_queued: int = 0  # dynamic_batching.default_queue_policy.max_queue_size; 0 = unbounded
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False  # its instances are stopping: whatever still reaches the inbox is refused
    reply: SendReply | None = None
    # A sequence model's: which instance holds each sequence (each instance has its own inbox).
    sequences: SequenceTable | None = None

    def enter(self) -> None:
        with self.lock:
            self.pending += 1

    def leave(self) -> None:
        with self.lock:
            self.pending -= 1


def refuse_leftovers(served: ServedVersion) -> None:
    """Answer requests still in the inbox of a version whose instances have stopped (they
    arrived while it was being unloaded, or the drain timed out). Safe from any thread: each
    item is taken once."""
    inboxes = {id(q): q for q in (served.inbox, *(i.inbox for i in served.instances))}
    for inbox in inboxes.values():
        _refuse(served, inbox)


def _refuse(served: ServedVersion, inbox: queue.SimpleQueue[object]) -> None:
    while True:
        try:
            item = inbox.get_nowait()
        except queue.Empty:
            return
        if isinstance(item, Inbound) and served.reply is not None:
            served.reply(
                item.frontend,
                item.header.request_id,
                errors.UNAVAILABLE,
                f"model '{item.header.model}' version was unloaded before the request ran",
                None,
            )


class ModelTable:
    def __init__(
        self,
        repository: str | Path,
        device: str | WorkerDevices,
        send_reply: SendReply,
        min_credit: int,
        send_ack: SendAck | None = None,
        flush: Callable[[], None] | None = None,
        drain_timeout_s: float = 30.0,
        inline_max_s: float = 0.0,
        wake: Callable[[], None] | None = None,
        health: DeviceHealth | None = None,
        staging_root: Path | None = None,
        allow_file_uploads: bool = False,
    ) -> None:
        self.repository = Path(repository)
        # RepositoryModelLoad overrides (``worker.overrides``): model -> (its directory, the
        # config text replacing its config.pbtxt); files are staged under ``staging_root``.
        self._overrides: dict[str, tuple[Path, str | None]] = {}
        self._staging_root = staging_root
        self._allow_file_uploads = allow_file_uploads
        self.unloaded: set[Key] = set()  # unloaded on request, listed as such by ``index``
        self._roots = sorted(
            {f"{self.repository}/", f"{self.repository.resolve()}/"}, key=len, reverse=True
        )
        # Single-instance CPU tensor models (``shape_bound``) whose warm call takes under a
        # quarter of this run on the I/O thread (``ModelInstance.pump``) until a batch takes
        # longer; 0 = never.
        self.inline_max_s = inline_max_s
        self.inline: tuple[ModelInstance, ...] = ()  # replaced whole: the I/O thread reads it
        self._wake = wake  # makes the I/O thread pump at once (a stop queued for an inline one)
        self._inline_lock = threading.Lock()
        self.devices = owned_devices(device)  # each model's instance_group picks among them
        self.device = self.devices.default
        self.health = health
        self._send_reply = send_reply
        self._send_ack = send_ack
        self._flush = flush
        self._min_credit = min_credit
        self._drain_timeout_s = drain_timeout_s
        self.served: dict[Key, ServedVersion] = {}
        self.latest: dict[str, str] = {}
        self.load_errors: dict[str, str] = {}
        self.shm_domain = ""  # announced with every version (fabric.shm_transport)

    # ---- reads (any thread) ---------------------------------------------------------------
    def announcements(self) -> list[ModelAnnouncement]:
        return [
            ModelAnnouncement(
                name,
                version,
                model_config_bytes(s.model.spec),
                s.capacity,
                s.max_queued,
                self.shm_domain,
            )
            for (name, version), s in sorted(self.served.items())
        ]

    def statistics(self, model: str, version: str) -> pb.ModelStatisticsResponse:
        out = pb.ModelStatisticsResponse()
        for (name, v), s in sorted(self.served.items()):
            if (not model or name == model) and (not version or v == version):
                out.model_stats.append(s.stats.to_proto(name, v))
        return out

    def pending(self) -> int:
        return sum(s.pending for s in self.served.values())

    # ---- changes (control thread) -----------------------------------------------------------
    def load_all(self) -> None:
        if not self.repository.is_dir():
            raise FileNotFoundError(f"model repository {self.repository} is not a directory")
        for model_dir in sorted(p for p in self.repository.iterdir() if p.is_dir()):
            if (model_dir / CONFIG_FILENAME).is_file():
                try:
                    self.load(model_dir.name)
                except RequestError as exc:
                    logger.error("%s", exc.message)

    def load(self, name: str, version: str = "") -> list[str]:
        """Load ``version`` of ``name`` (or the versions its policy selects, then unload the
        others). A version whose config changed on disk is loaded anew and swapped in. When
        a load fails, what was served before stays served. Raises RequestError."""
        source = self._source(name)
        if version and not (version.isdigit() and len(version) <= names.MAX_VERSION_CHARS):
            raise RequestError(
                errors.INVALID_ARGUMENT, f"version {names.quote(version)} is not a number"
            )
        if version and int(version) not in source.available_versions:
            raise RequestError(errors.NOT_FOUND, f"model '{name}' has no version {version}")
        wanted = [version] if version else [str(v) for v in source.versions]
        failures = []
        for v in wanted:
            current = self.served.get((name, v))
            if current is not None and current.model.spec == source.spec:
                continue
            try:
                self._start(source, v)  # replaces ``current`` once the new one is warm
            except ModelLoadError as exc:
                logger.error("%s", exc)
                reason = self._public(exc.reason)  # RepositoryIndex's reason for this version
                self.load_errors[f"{name}:{v}"] = reason
                failures.append(texts.version_unavailable(v, reason))
                continue
            if current is not None:
                self._retire(current, (name, v))
        if failures:  # Triton's code and text (its message ends in a newline; ours does not)
            raise RequestError(errors.INVALID_ARGUMENT, texts.load_failed(name, failures))
        if not version:
            for key in [k for k in self.served if k[0] == name and k[1] not in wanted]:
                self._stop(key)
        return sorted((v for n, v in self.served if n == name), key=version_sort_key)

    def unload(self, name: str, version: str = "") -> None:
        keys = [k for k in self.served if k[0] == name and (not version or k[1] == version)]
        if not keys:
            raise RequestError(errors.NOT_FOUND, f"model {names.quote(name)} is not loaded")
        for key in keys:
            self._stop(key)
            self.unloaded.add(key)

    def load_override(self, name: str, override: LoadOverride) -> list[str]:
        """``load`` with a RepositoryModelLoad's config override and files; a failed load
        leaves what was served, and the override before it, in place."""
        if override.files:
            if not self._allow_file_uploads or self._staging_root is None:
                raise RequestError(
                    errors.FAILED_PRECONDITION,
                    "model file uploads ('file:' parameters) are turned off on this server "
                    "(--allow-model-file-uploads)",
                )
            model_dir = stage(self._staging_root, name, override)
        else:
            self._source(name)  # a config-only override applies to a model in the repository
            model_dir = self.repository / name
        before = self._overrides.get(name)
        self._overrides[name] = (model_dir, override.config_text)
        try:
            return self.load(name)
        except RequestError:
            if before is None:
                self._overrides.pop(name, None)
            else:
                self._overrides[name] = before
            raise

    def forget_override(self, name: str) -> None:
        self._overrides.pop(name, None)

    def index(self) -> pb.RepositoryIndexResponse:
        """Triton's RepositoryIndex as this worker sees it: every model in the repository (or
        loaded with an override), served versions READY, unloaded or failed ones UNAVAILABLE
        with the reason."""
        out = pb.RepositoryIndexResponse()
        listed: set[str] = set()
        for (name, version), _ in sorted(self.served.items()):
            out.models.add(name=name, version=version, state="READY")
            listed.add(name)
        for name, version in sorted(self.unloaded - set(self.served)):
            out.models.add(name=name, version=version, state="UNAVAILABLE", reason="unloaded")
            listed.add(name)
        for key, reason in sorted(self.load_errors.items()):
            name, _, version = key.partition(":")
            if (name, version) not in self.served:
                out.models.add(name=name, version=version, state="UNAVAILABLE", reason=reason)
                listed.add(name)
        for name in sorted(self._on_disk() | set(self._overrides)):
            if name not in listed:  # in the repository, never loaded here: Triton lists it bare
                out.models.add(name=name)
        return out

    def _on_disk(self) -> set[str]:
        return {
            p.name
            for p in self.repository.iterdir()
            if p.is_dir() and (p / CONFIG_FILENAME).is_file()
        }

    def poll(self) -> bool:
        """Follow the repository on disk; True when what is served changed."""
        before = set(self.served)
        on_disk = self._on_disk()
        for name in sorted(on_disk):
            try:
                self.load(name)
            except RequestError as exc:
                logger.error("poll: %s", exc.message)
        for key in [k for k in self.served if k[0] not in on_disk]:
            self._stop(key)
        return set(self.served) != before

    def stop_all(self) -> None:
        for key in list(self.served):
            self._stop(key, drain=False)

    def remove_staging(self) -> None:
        if self._staging_root is not None:
            shutil.rmtree(self._staging_root, ignore_errors=True)

    # ---- internals ----------------------------------------------------------------------------
    def _public(self, text: str) -> str:
        """``text`` with the repository's location cut out: names in error texts start at the
        model directory. Clients see these texts; the log keeps the full paths."""
        for root in self._roots:
            text = text.replace(root, "")
        return text

    def _source(self, name: str) -> ModelSource:
        # The name comes off the wire: checked before it becomes part of a path. One that
        # cannot name a model directory is simply not in the repository.
        if name in self._overrides:
            model_dir, config_text = self._overrides[name]
            try:
                return scan_model(model_dir, config_text)
            except ModelConfigError as exc:
                message = self._public(str(exc))
                self.load_errors[name] = message
                raise RequestError(errors.INVALID_ARGUMENT, message) from exc
        present = False
        if names.valid_model_name(name) and not name.startswith("."):
            try:
                present = (self.repository / name / CONFIG_FILENAME).is_file()
            except OSError:  # e.g. ENAMETOOLONG: 256 characters can exceed NAME_MAX bytes
                present = False
        if not present:
            raise RequestError(errors.NOT_FOUND, f"no model {names.quote(name)} in the repository")
        try:
            return scan_model(self.repository / name)
        except ModelConfigError as exc:
            message = self._public(str(exc))
            self.load_errors[name] = message
            raise RequestError(errors.INVALID_ARGUMENT, message) from exc

    def _start(self, source: ModelSource, version: str) -> None:
        spec = source.spec
        try:
            placed = place_instances(spec.name, instance_groups(spec.config), self.devices)
        except PlacementError as exc:
            raise ModelLoadError(spec.name, version, str(exc)) from exc
        if not placed:
            logger.info(
                "model %s version %s: its instance_group GPUs belong to other workers",
                spec.name,
                version,
            )
            return
        count = len(placed)
        models: list[LoadedModel] = []
        warm_s: float | None = None
        try:
            for device in placed:
                models.append(load_model(source, version, device))
            candidate = self.inline_max_s > 0 and placed == ["cpu"] and models[0].shape_bound
            # Sequence and decoupled models need control inputs or a stream: no warm-up call.
            plain = not spec.decoupled and spec.sequence_batching is None
            for m in models:
                if not plain:
                    continue
                run_config_warmup(m, source.path)  # the config's model_warmup: may fail a load
                if not on_gpu(m):  # GPU instances warm up on their own threads
                    warm_s = default_warm_up(m, timed=candidate)  # never fails a load
        except Exception as exc:
            for m in models:
                m.close()
            if isinstance(exc, ModelLoadError):
                raise
            raise ModelLoadError(spec.name, version, str(exc)) from exc
        served = ServedVersion(
            models[0],
            queue.SimpleQueue(),
            ModelStats(),
            max(self._min_credit, 2 * max(1, spec.max_batch_size) * count),
        )
        if spec.dynamic_batching is not None:
            served.max_queued = spec.dynamic_batching.max_queue_size
        reply = served.reply = self._reply_for(served)
        served.instances = [
            ModelInstance(
                m,
                i,
                reply,
                served.stats,
                # A sequence runs on one instance, in order: each reads an inbox of its own.
                served.inbox if spec.sequence_batching is None else queue.SimpleQueue(),
                self._send_ack,
                self._flush,
                served.cancelled,
                health=self.health,
            )
            for i, m in enumerate(models)
        ]
        if spec.sequence_batching is not None:
            idle_s = spec.sequence_batching.max_sequence_idle_us / 1e6
            served.sequences = SequenceTable(spec.name, count, idle_s)
        inline = warm_s is not None and warm_s < self.inline_max_s / 4
        for inst in served.instances:
            inst.shares_inbox = len(served.instances) > 1
            prepare = preparation(inst.model) if plain else None
            inst.start(self.inline_max_s if inline else 0.0, prepare)
        self._await_prepared(served, version)
        if inline:
            with self._inline_lock:
                self.inline = (*self.inline, *served.instances)
        self.served = {**self.served, (spec.name, version): served}
        self._refresh_latest()
        self.load_errors.pop(f"{spec.name}:{version}", None)
        self.load_errors.pop(spec.name, None)
        self.unloaded.discard((spec.name, version))
        logger.info(
            "model %s version %s ready (%d instance(s) on %s%s)",
            spec.name,
            version,
            count,
            ", ".join(sorted(set(placed))),
            ", inline" if inline else "",
        )

    def _await_prepared(self, served: ServedVersion, version: str) -> None:
        """Wait for every instance's warm-up on its own thread; a failure stops them all and
        fails the load (nothing was announced yet)."""
        try:
            for inst in served.instances:
                inst.wait_prepared(PREPARE_TIMEOUT_S)
        except Exception as exc:
            for inst in served.instances:
                inst.stop()
            for inst in served.instances:
                inst.join(5.0)
                inst.model.close()
            name = served.model.spec.name
            raise ModelLoadError(name, version, f"warm-up failed: {exc}") from exc

    def _stop(self, key: Key, drain: bool = True) -> None:
        served = self.served.get(key)
        if served is None:
            return
        self.served = {k: v for k, v in self.served.items() if k != key}
        self._refresh_latest()
        self._retire(served, key, drain)

    def _retire(self, served: ServedVersion, key: Key, drain: bool = True) -> None:
        """Stop a version no longer in ``served`` once what it holds is answered."""
        give_up = time.monotonic() + self._drain_timeout_s
        while drain and served.pending > 0 and time.monotonic() < give_up:
            time.sleep(0.01)
        served.closed = True
        for inst in served.instances:
            inst.stop()
        if self._wake is not None and any(inst.inline for inst in served.instances):
            self._wake()
        for inst in served.instances:
            inst.join(5.0)
        # An inline instance that did not finish in time stays pumped (and its model open)
        # until it has answered what it holds: ``reap`` then closes it. A finished one goes.
        self._forget_inline([i for i in served.instances if i.finished])
        refuse_leftovers(served)
        if self._flush is not None:
            self._flush()
        for inst in served.instances:
            if inst.finished:
                inst.model.close()
            else:
                logger.warning("%s still busy after unload; its model stays loaded", inst.name)
                inst.orphaned = True
                inst.stop()  # refuse_leftovers took its stop marker from the inbox
        logger.info("model %s version %s unloaded", *key)

    def reap(self, inst: ModelInstance) -> None:
        """An orphaned inline instance (see ``_retire``) finished: forget it, close its model."""
        self._forget_inline([inst])
        inst.model.close()
        logger.info("%s finished after its unload; model closed", inst.name)

    def _forget_inline(self, instances: list[ModelInstance]) -> None:
        gone = {id(i) for i in instances}
        with self._inline_lock:  # the control thread and the I/O thread (``reap``) both write
            self.inline = tuple(i for i in self.inline if id(i) not in gone)

    def _refresh_latest(self) -> None:
        latest: dict[str, str] = {}
        for name, v in self.served:
            if name not in latest or version_sort_key(v) > version_sort_key(latest[name]):
                latest[name] = v
        self.latest = latest

    def _reply_for(self, served: ServedVersion) -> SendReply:
        send = self._send_reply

        def reply(
            frontend: PeerId,
            request_id: int,
            status: str,
            message: str,
            body: bytes | RawParts | None,
            more: bool = False,
        ) -> None:
            if more:  # a decoupled model's request is pending until its last reply
                send(frontend, request_id, status, message, body, True)
                return
            served.leave()
            send(frontend, request_id, status, message, body)

        return reply
