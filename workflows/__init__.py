"""Workflows: deterministic orchestration of an upgrade."""
