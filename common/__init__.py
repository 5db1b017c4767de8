"""fracfl's shared core: model, data, synthetic radiographs, training engine, metrics.

Importing the package first applies the offline switches (see `common.offline`), before anything can import
Ultralytics or matplotlib.
"""

from common import offline as _offline  # noqa: F401
