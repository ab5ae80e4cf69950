/* Release flavour (CONFIG_ENV_WRITEABLE_LIST): the only variables imported from the stored
 * environment are the A/B state; everything else comes from the built-in default. */
#define CFG_ENV_FLAGS_LIST_STATIC "bootcount:dw,upgrade_available:dw,boot_slot:sw"
