"""FIT images (U-Boot's signed configurations): ``sign`` signs them, ``verify`` checks them as U-Boot
does, ``keys`` puts public keys into and reads them from a control DTB, ``tree`` reads device trees
through libfdt once their structure is checked, ``regions`` walks the flattened tree itself (the
hashed regions, the property spans)."""
