"""TF-A: the Firmware Image Package (``fip``) and the Trusted Board Boot certificates in it (``tbbr``)."""
