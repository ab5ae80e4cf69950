"""OP-TEE: signed Trusted Applications (``ta``: the ``shdr`` header OP-TEE's REE-FS TA loader checks
against the ``TA_PUBLIC_KEY`` built into ``tee.bin``)."""
