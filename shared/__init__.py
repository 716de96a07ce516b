"""The library every VLFeedback service imports: contracts, runtime, ledger, blobs, backends, HTTP."""

__version__ = "0.1.0"
