"""fracfl's shared core: model, data, synthetic radiographs, training engine, metrics, inference, DICOM reading,
privacy accounting, and the wire contract between server and sites (`protocol`, `records`).

Importing the package first applies the offline switches (see `common.offline`), before anything can import
Ultralytics or matplotlib.
"""

from common import offline as _offline  # noqa: F401
