"""Benchmark harness: bare gRPC ceiling, closed-loop load generator, in-process model baseline.

``python -m bench.run`` measures our stack against baselines taken in the same run and reports
ratios. Modules, one job each:

- entry points: ``run`` (``make bench``), ``peers`` (``make bench-peers``), ``broker_bench``
  (``make bench-broker``), ``chaos`` (``make chaos``), ``loadgen``, ``inprocess``, ``plot``;
- processes: ``procs`` (CPU, wake-ups, memory via psutil), ``lifecycle`` (start and always stop
  a child), ``ready`` (readiness and one sanity request), ``systems`` (bare server, our stack,
  model repository), ``peers_venv`` and ``broker_roles`` (the peers' virtualenv, fake peers);
- measuring: ``measure`` (one point, sweeps, idle), ``batchstats`` (server statistics),
  ``compare`` (server compute against the model in-process);
- results: ``results`` and ``broker_results`` (typed), ``summary`` (medians and ratios),
  ``markdown`` (tables), ``cli`` (shared flags, metadata, outputs), ``report`` (``latest.md``,
  the PNG).
"""
