"""Production-grade Lightning callbacks that work in any Lightning project."""

__all__: list[str] = []
