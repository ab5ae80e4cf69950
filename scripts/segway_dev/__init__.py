"""Development harness: boot media, FIT building, FIT attacks and a QEMU/U-Boot runner.

These modules turn a signed U-Boot FIT into evidence from a verifier we did not write: Debian's
own U-Boot build running under QEMU either accepts the FIT (and, for arm64, boots Linux to
userspace) or refuses it.
"""
