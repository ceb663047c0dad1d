"""brcd: image search by binary hash codes (CIBHash teachers, BRCD students)."""

__version__ = "0.1.0"
