"""The torch-free floor every part of copd imports, and that imports none of them.

    vocab     run statuses and their sets, the lifecycle table, strategies, domains, verifiers, unit ids
    metrics   the registry of metric keys (reduction, phase, period, meaning)
    spec      the run spec and the typed knobs, with the one knob-merge rule
    plan      a run as units (Unit, Strategy, plan, Layout)
    schemas   the REST bodies of /api/v1
    settings  the COPD_* environment
    broker    what server and workers agree on about Celery (task names, queues, broker settings)
    client    the one REST client (CLI, workers, dashboard)

docs/architecture.md draws the parts and the one-way arrows between them.
"""

__version__ = "0.1.0"
