"""NXP HABv4 (i.MX 6/7/8M): ``image`` signs and verifies boot images, ``ivt`` reads their Image Vector
Tables, ``csf`` builds and checks the Command Sequence File, ``cms`` its CMS signatures, ``srk`` the
Super Root Key table and its fuse values, ``pki`` issues HAB certificates. AHAB (i.MX 8/9 containers)
is a different format and is :mod:`segway_sign.formats.ahab`."""
