"""Device choice and instance placement as pure functions, with fakes for what the host has:
the GPU counts, the NVIDIA device node and ``nvidia-smi``."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import pytest
from google.protobuf import text_format

from protos import model_config_pb2 as mc
from worker.devices import (
    CPU_ONLY,
    KIND_AUTO,
    KIND_CPU,
    KIND_GPU,
    KIND_MODEL,
    CudaState,
    DeviceError,
    InstanceGroup,
    PlacementError,
    WorkerDevices,
    count_gpus,
    host_has_nvidia_gpu,
    instance_groups,
    place_instances,
    resolve_devices,
    warm_batch_sizes,
)

NO_CUDA_BUILD = CudaState(False, 0, "2.13.0+cpu", None)
CUDA_NO_GPU = CudaState(False, 0, "2.13.0+cu128", "12.8")
FOUR_GPUS = CudaState(True, 4, "2.13.0+cu128", "12.8")
SMI_LISTING = "GPU 0: NVIDIA H100 (UUID: GPU-1)\nGPU 1: NVIDIA H100 (UUID: GPU-2)\n"


# ---- the worker's devices ----------------------------------------------------------------------


def test_auto_owns_every_visible_gpu() -> None:
    owned = resolve_devices("auto", FOUR_GPUS, nvidia_host=True)
    assert owned == WorkerDevices((0, 1, 2, 3), 4)
    assert owned.default == "cuda:0"
    assert resolve_devices("cuda", FOUR_GPUS, nvidia_host=True) == owned


def test_cuda_n_owns_that_gpu_only() -> None:
    owned = resolve_devices("cuda:2", FOUR_GPUS, nvidia_host=True)
    assert owned == WorkerDevices((2,), 4)
    assert owned.default == "cuda:2"
    assert owned.describe() == "cuda:2 (of 4 visible)"


def test_auto_without_an_nvidia_gpu_is_the_cpu() -> None:
    assert resolve_devices("auto", NO_CUDA_BUILD, nvidia_host=False) == CPU_ONLY
    assert CPU_ONLY.default == "cpu"
    assert resolve_devices("cpu", FOUR_GPUS, nvidia_host=True) == CPU_ONLY


def test_auto_on_a_gpu_host_with_cpu_torch_fails_loudly() -> None:
    with pytest.raises(DeviceError) as info:
        resolve_devices("auto", NO_CUDA_BUILD, nvidia_host=True)
    text = str(info.value)
    assert "has an NVIDIA GPU" in text
    assert "2.13.0+cpu is a CPU-only build" in text
    assert "--index-url https://download.pytorch.org/whl/cu" in text
    assert "--device cpu" in text


def test_auto_on_a_gpu_host_whose_cuda_torch_sees_no_gpu_fails_loudly() -> None:
    with pytest.raises(DeviceError, match=r"CUDA 12\.8\) finds no usable GPU.*nvidia-smi"):
        resolve_devices("auto", CUDA_NO_GPU, nvidia_host=True)


@pytest.mark.parametrize("requested", ["cuda", "cuda:0"])
def test_an_explicit_cuda_device_without_cuda_fails(requested: str) -> None:
    with pytest.raises(DeviceError, match="CPU-only build"):
        resolve_devices(requested, NO_CUDA_BUILD, nvidia_host=False)


@pytest.mark.parametrize(
    ("requested", "message"),
    [
        ("cuda:4", r"only 4 GPU\(s\) are visible \(cuda:0\.\.cuda:3\)"),
        ("cuda:x", "must be a number"),
        ("tpu", "expected auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_device_settings_are_refused(requested: str, message: str) -> None:
    with pytest.raises(DeviceError, match=message):
        resolve_devices(requested, FOUR_GPUS, nvidia_host=True)


# ---- detecting an NVIDIA host without torch.cuda -------------------------------------------------


def never_runs(argv: Sequence[str]) -> str:
    raise AssertionError(f"ran {argv}")


def test_the_device_node_shows_an_nvidia_host() -> None:
    assert host_has_nvidia_gpu(lambda p: p == "/dev/nvidia0", lambda _: None, never_runs)


def test_nvidia_smi_listing_shows_an_nvidia_host() -> None:
    ran: list[Sequence[str]] = []

    def run(argv: Sequence[str]) -> str:
        ran.append(argv)
        return SMI_LISTING

    assert host_has_nvidia_gpu(lambda _: False, lambda _: "/usr/bin/nvidia-smi", run)
    assert ran == [["nvidia-smi", "-L"]]
    assert count_gpus(SMI_LISTING) == 2
    assert count_gpus("No devices found.\n") == 0


def test_no_node_and_no_nvidia_smi_is_no_nvidia_host() -> None:
    assert not host_has_nvidia_gpu(lambda _: False, lambda _: None, never_runs)


def test_a_failing_nvidia_smi_is_no_nvidia_host() -> None:
    def run(argv: Sequence[str]) -> str:
        raise subprocess.TimeoutExpired(list(argv), 10)

    assert not host_has_nvidia_gpu(lambda _: False, lambda _: "/usr/bin/nvidia-smi", run)
    assert not host_has_nvidia_gpu(lambda _: False, lambda _: "/x", lambda _: "No devices.\n")


# ---- instance_group kind and gpus ----------------------------------------------------------------

ONE_GPU_OF_TWO = WorkerDevices((1,), 2)
BOTH_GPUS = WorkerDevices((0, 1), 2)


def groups(text: str) -> list[InstanceGroup]:
    config = text_format.Parse(text, mc.ModelConfig())
    return instance_groups(config)


def test_instance_groups_read_from_the_config() -> None:
    assert groups("") == [InstanceGroup()]
    assert groups(
        "instance_group [ { kind: KIND_CPU count: 2 }, { kind: KIND_GPU gpus: [1] } ]"
    ) == [InstanceGroup(KIND_CPU, 2, ()), InstanceGroup(KIND_GPU, 1, (1,))]


def test_kind_cpu_stays_on_the_cpu_of_a_gpu_worker() -> None:
    assert place_instances("m", [InstanceGroup(KIND_CPU, 2)], BOTH_GPUS) == ["cpu", "cpu"]


def test_kind_gpu_lists_gpu_1() -> None:
    placed = place_instances("m", [InstanceGroup(KIND_GPU, 1, (1,))], BOTH_GPUS)
    assert placed == ["cuda:1"]
    assert place_instances("m", [InstanceGroup(KIND_GPU, 2, (1,))], ONE_GPU_OF_TWO) == [
        "cuda:1",
        "cuda:1",
    ]


def test_gpus_owned_by_other_workers_place_nothing_here() -> None:
    worker_on_gpu_0 = WorkerDevices((0,), 2)
    assert place_instances("m", [InstanceGroup(KIND_GPU, 1, (1,))], worker_on_gpu_0) == []


def test_count_is_per_gpu_as_in_triton() -> None:
    assert place_instances("m", [InstanceGroup(KIND_AUTO, 2)], BOTH_GPUS) == [
        "cuda:0",
        "cuda:0",
        "cuda:1",
        "cuda:1",
    ]
    assert place_instances("m", [InstanceGroup(KIND_GPU, 1)], ONE_GPU_OF_TWO) == ["cuda:1"]


def test_kind_auto_on_a_cpu_worker_is_the_cpu() -> None:
    assert place_instances("m", [InstanceGroup(KIND_AUTO, 3)], CPU_ONLY) == ["cpu"] * 3


def test_mixed_groups_keep_their_order() -> None:
    placed = place_instances(
        "m", [InstanceGroup(KIND_CPU, 1), InstanceGroup(KIND_GPU, 1, (0,))], BOTH_GPUS
    )
    assert placed == ["cpu", "cuda:0"]


@pytest.mark.parametrize(
    ("group", "owned", "message"),
    [
        (InstanceGroup(KIND_GPU, 1), CPU_ONLY, "KIND_GPU, but this worker computes on"),
        (InstanceGroup(KIND_AUTO, 1, (0,)), CPU_ONLY, r"lists gpus \[0\], but this worker has no"),
        (InstanceGroup(KIND_GPU, 1, (2, 5)), BOTH_GPUS, r"gpus \[2, 5\] not visible .*2 GPU"),
        (InstanceGroup(KIND_CPU, 1, (0,)), BOTH_GPUS, "KIND_CPU cannot list gpus"),
        (InstanceGroup(KIND_MODEL, 1), BOTH_GPUS, "kind KIND_MODEL is not supported"),
    ],
)
def test_impossible_placements_are_refused_by_name(
    group: InstanceGroup, owned: WorkerDevices, message: str
) -> None:
    with pytest.raises(PlacementError, match=r"model 'm' instance_group\[0\]: " + message):
        place_instances("m", [group], owned)


# ---- warm-up sizes ---------------------------------------------------------------------------


def test_warm_up_sizes_are_one_the_preferred_and_the_max() -> None:
    assert warm_batch_sizes(64, (16, 32)) == [1, 16, 32, 64]
    assert warm_batch_sizes(8, (8, 100, 0)) == [1, 8]
    assert warm_batch_sizes(1, ()) == [1]
    assert warm_batch_sizes(0, (4,)) == [0]  # no batching: the unbatched call only
