"""bidsafe: raw MRI DICOM sessions to a BIDS dataset that is safe to share."""

__version__ = "0.1.0"
