"""The engine layer: the runner (a ``transitions`` model), the machine, step attempts,
choosing the next state, resuming, failures and shutdown. It uses the store and the
model; only :mod:`fsmflow.engine.machine` imports ``transitions``.
"""
