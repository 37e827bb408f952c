"""predictd daemon: DICOM networking, the queue, the pipeline stages."""
