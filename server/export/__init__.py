"""Edge builds of published models: TFLite (LiteRT) exports, their equivalence with PyTorch, and the server's
background exporter. See docs/export.md."""

from server.export.config import VARIANTS, ExportConfig

__all__ = ["VARIANTS", "ExportConfig"]
