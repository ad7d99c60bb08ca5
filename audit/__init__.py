"""audit: provenance, consent, duplication, memorisation and bias audits for image-text data."""

__version__ = "0.1.0"
