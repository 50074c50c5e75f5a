"""Pipelines of stages (issue 12): memoized functions wired into a DAG. No public API yet."""
