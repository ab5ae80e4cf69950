/* Release flavour (CONFIG_ENV_WRITEABLE_LIST): the only variables imported from the stored
 * environment are the A/B state; everything else comes from the built-in default. U-Boot
 * v2023.01 renamed the macro include/env_flags.h reads from CONFIG_ENV_FLAGS_LIST_STATIC to
 * CFG_ENV_FLAGS_LIST_STATIC; ST's v2022.10-stm32mp still reads the old name. */
#define SEGWAY_ENV_FLAGS_LIST "bootcount:dw,upgrade_available:dw,boot_slot:sw"
#define CFG_ENV_FLAGS_LIST_STATIC SEGWAY_ENV_FLAGS_LIST
#define CONFIG_ENV_FLAGS_LIST_STATIC SEGWAY_ENV_FLAGS_LIST
