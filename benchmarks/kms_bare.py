"""The floor of the segway-kms benchmark: signing with tpm2-pytss directly, and a bare gRPC server around it.

DirectSigner signs on the daemon's swtpm with a key of its own under the daemon's SRK, on a loaded handle:
the direct path of the benchmark. Run as a program, this module is the bare server: the Kms service's Sign
and nothing else (no key lookup, access control, verification or audit), the same gRPC server, worker
count and arrival-order TPM lock as segway-kmsd. What it reaches under many clients is what this machine
allows any Python gRPC daemon in front of this TPM.

    python -m benchmarks.kms_bare <tcti> <template> <scheme> <socket> <workers>   (prints "ready")
"""
from __future__ import annotations

import hashlib
import os
import sys
from concurrent import futures


class DirectSigner:
    """A key created and loaded with tpm2-pytss directly under the daemon's SRK, signing on a loaded handle."""

    def __init__(self, tcti: str, template: str, scheme: str):
        from tpm2_pytss import ESAPI
        from tpm2_pytss.constants import TPM2_ALG, TPMA_OBJECT
        from tpm2_pytss.types import TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE, TPMT_SIG_SCHEME

        attrs = (TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
                 | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.NODA)
        self.ectx = ESAPI(tcti)
        srk = self.ectx.tr_from_tpmpublic(0x81000001)  # the SRK the daemon persisted
        priv, pub, *_ = self.ectx.create(srk, TPM2B_SENSITIVE_CREATE(),
                                         TPM2B_PUBLIC.parse(template, objectAttributes=attrs))
        self.handle = self.ectx.load(srk, priv, pub)
        self.ec = scheme == "ecdsa"
        self.scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA if self.ec else TPM2_ALG.RSASSA)
        self.scheme.details.any.hashAlg = TPM2_ALG.SHA256

    def sign(self, digest: bytes | None = None):
        """A TPMT_SIGNATURE over digest (a random one if None)."""
        from tpm2_pytss.types import TPM2B_DIGEST

        digest = digest or hashlib.sha256(os.urandom(16)).digest()
        return self.ectx.sign(self.handle, TPM2B_DIGEST(digest), self.scheme)

    def close(self):
        self.ectx.flush_context(self.handle)
        self.ectx.close()


def main() -> None:
    import grpc

    from segway_kms.api import kms_pb2 as pb
    from segway_kms.api import kms_pb2_grpc
    from segway_kms.backends.fifolock import FifoRLock
    from segway_kms.backends.tpm import _signature_bytes

    tcti, template, scheme, socket, workers = sys.argv[1:6]
    signer = DirectSigner(tcti, template, scheme)
    lock = FifoRLock()

    class Bare(kms_pb2_grpc.KmsServicer):
        def Sign(self, request, context):
            with lock:
                sig = signer.sign(request.digest)
            return pb.SignResponse(signature=_signature_bytes(sig, signer.ec), version=1)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=int(workers)))
    kms_pb2_grpc.add_KmsServicer_to_server(Bare(), server)
    server.add_insecure_port(f"unix:{socket}")
    server.start()
    print("ready", flush=True)
    sys.stdin.read()  # until the benchmark closes stdin
    server.stop(1).wait()
    signer.close()


if __name__ == "__main__":
    main()
