"""Sum the statistics each worker reported into one ModelStatisticsResponse."""

from __future__ import annotations

from protos import grpc_service_pb2 as pb

_REQUEST_FIELDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
_BATCH_FIELDS = ("compute_input", "compute_infer", "compute_output")


def _add(into: object, other: object, fields: tuple[str, ...]) -> None:
    for f in fields:
        a, b = getattr(into, f), getattr(other, f)
        a.count += b.count
        a.ns += b.ns


def merge_statistics(responses: list[pb.ModelStatisticsResponse]) -> pb.ModelStatisticsResponse:
    """Per (model, version): counts and durations summed, batch statistics summed per size."""
    merged: dict[tuple[str, str], pb.ModelStatistics] = {}
    for response in responses:
        for s in response.model_stats:
            key = (s.name, s.version)
            m = merged.get(key)
            if m is None:
                merged[key] = m = pb.ModelStatistics(name=s.name, version=s.version)
            m.last_inference = max(m.last_inference, s.last_inference)
            m.inference_count += s.inference_count
            m.execution_count += s.execution_count
            _add(m.inference_stats, s.inference_stats, _REQUEST_FIELDS)
            for b in s.batch_stats:
                target = next((t for t in m.batch_stats if t.batch_size == b.batch_size), None)
                if target is None:
                    target = m.batch_stats.add(batch_size=b.batch_size)
                _add(target, b, _BATCH_FIELDS)
    out = pb.ModelStatisticsResponse()
    for key in sorted(merged):
        stats = merged[key]
        ordered = sorted(stats.batch_stats, key=lambda b: b.batch_size)
        rebuilt = [pb.InferBatchStatistics() for _ in ordered]
        for dst, src in zip(rebuilt, ordered, strict=True):
            dst.CopyFrom(src)
        del stats.batch_stats[:]
        stats.batch_stats.extend(rebuilt)
        out.model_stats.append(stats)
    return out
