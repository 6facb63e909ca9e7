"""``make run``'s supervisor: brokers, workers and frontends on one machine, kept running.

Why our own small supervisor and not supervisord, circus or honcho: what ``make run`` needs is
(1) children that die with the runner even when it is SIGKILLed (``PR_SET_PDEATHSIG``, set in the
child between fork and exec), (2) an ordered, bounded stop (frontends drain first, then workers,
then brokers; SIGKILL after a grace per tier; a second Ctrl-C kills at once) and (3) a crash-loop
give-up per replica while the other replicas keep serving. honcho stops everything when one
process exits (the behaviour issue 17 complains about); supervisord and circus restart with
backoff but need a daemon, a config file and their own control tool, know nothing of
pdeathsig and stop programs by priority only with extra configuration. The three duties above
fit in a few hundred lines: ``policy`` (pure restart decisions, fake-clock tests), ``plan``
(which processes with which flags and ports), ``ports`` (is a port free) and ``runner`` (the
single-threaded process loop).
"""
