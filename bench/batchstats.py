"""Server-side batch statistics: snapshots of ``get_inference_statistics`` and their difference.

``batch_delta`` is pure, so what a window executed is computed (and tested) without a server.
"""

from __future__ import annotations

from bench.results import BatchSnapshot, ComputeDelta, SizeCompute


def batch_snapshot(
    url: str, model: str, headers: dict[str, str] | None = None
) -> BatchSnapshot | None:
    """Cumulative executed-batch counts and compute time for the model, None where unavailable."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        resp = client.get_inference_statistics(model_name=model, headers=headers, client_timeout=2)
        stats = list(resp.model_stats)
        if not stats:
            return None
        by_size: dict[int, tuple[int, int]] = {}
        inference = execution = infer_ns = 0
        for ms in stats:
            for b in ms.batch_stats:
                n, ns = by_size.get(b.batch_size, (0, 0))
                by_size[b.batch_size] = (n + b.compute_infer.count, ns + b.compute_infer.ns)
            inference += ms.inference_count
            execution += ms.execution_count
            infer_ns += ms.inference_stats.compute_infer.ns
        return BatchSnapshot(by_size, inference, execution, infer_ns)
    except Exception:
        return None
    finally:
        client.close()


def batch_delta(before: BatchSnapshot | None, after: BatchSnapshot | None) -> ComputeDelta | None:
    """What executed between two snapshots: batches per size, compute time, rows."""
    if not before or not after:
        return None
    sizes: dict[int, SizeCompute] = {}
    for s, (n, ns) in sorted(after.by_size.items()):
        n0, ns0 = before.by_size.get(s, (0, 0))
        if n - n0 > 0:
            sizes[s] = SizeCompute(n=n - n0, ns=ns - ns0)
    rows = sum(s * v.n for s, v in sizes.items())
    batches = sum(v.n for v in sizes.values())
    total_ns = sum(v.ns for v in sizes.values())
    inferences = after.inference_count - before.inference_count
    execs = after.execution_count - before.execution_count
    mean_batch = None
    if batches:
        mean_batch = rows / batches
    elif execs > 0:
        mean_batch = inferences / execs
    # The figure: inference_stats.compute_infer.ns / inference_count. Every request is
    # charged its whole batch, so this is the mean batch time seen by a request.
    per_inference = (
        (after.infer_ns - before.infer_ns) / inferences / 1e3 if inferences > 0 else None
    )
    return ComputeDelta(
        sizes=sizes,
        rows=rows,
        batches=batches,
        ns=total_ns,
        mean_batch=mean_batch,
        us_per_row=total_ns / rows / 1e3 if rows else None,
        triton_infer_us_per_inference=per_inference,
    )
