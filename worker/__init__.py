"""Celery glue: one task runs one unit of a run (run, expert, cycle, phase) through trainer/ and reports over REST.

See docs/worker.md for the task graph, the queues and what happens when a worker dies.
"""
