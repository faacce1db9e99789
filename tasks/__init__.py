"""Nornir task functions: shared primitives and one module per component.

A task reads the current state (a fact), compares it with the desired state, acts only
on a difference and returns a Result whose `changed` and `diff` say what it did.
"""
