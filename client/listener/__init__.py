"""`fracfl listen`: a DICOM Storage SCP that queues radiographs durably, runs inference and sends results to a PACS."""
