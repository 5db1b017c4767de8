"""Network definitions: YOLOv7 graphs as Ultralytics models."""
