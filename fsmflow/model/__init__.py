"""The model layer: definitions, conditions, contexts and records. No I/O.

Imports only :mod:`fsmflow.errors`; every other layer may import it.
"""
