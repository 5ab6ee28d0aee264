"""Models of the plugin (each an anomalib ``AnomalibModule``); added as their issues land."""

__all__: list[str] = []
