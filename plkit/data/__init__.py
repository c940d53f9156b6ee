"""Reusable LightningDataModules."""

__all__: list[str] = []
