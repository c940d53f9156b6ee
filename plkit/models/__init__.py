"""Reusable LightningModules."""

__all__: list[str] = []
