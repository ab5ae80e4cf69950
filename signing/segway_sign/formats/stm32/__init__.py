"""STM32MP secure boot: ``header`` signs and verifies the STM32 image header (v1 and v2) the ROM
checks, ``fuses`` gives the public-key hash (PKH, PKHTH) values fused into OTP."""
