"""Site-side DICOM: the pipeline the network listener calls, de-identification, results for the PACS, quarantine."""

from client.dicom.pipeline import DicomPipeline, PipelineResult

__all__ = ["DicomPipeline", "PipelineResult"]
