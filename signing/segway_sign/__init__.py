"""segway-sign: sign boot artifacts with keys kept in a PKCS#11 token."""

__version__ = "0.1.0"
