"""dm-verity: ``tree`` computes the hash tree and its root hash byte-identical to ``veritysetup
format`` (parameters, layout, superblock, the streamed and two-process level hashing); ``sign`` signs
the root hash (PKCS#7 as the kernel checks it), writes and reads ``verity.env``, and writes and
verifies a signed output directory."""
