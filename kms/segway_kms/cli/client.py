"""Channel set-up for segway-kmsctl and tests: Unix socket, or TCP with mTLS."""
from __future__ import annotations

from pathlib import Path

import grpc

from segway_kms.api import kms_pb2_grpc
from segway_kms.errors import InvalidArgument


def channel(socket: str | None = None, address: str | None = None, ca: str | None = None, cert: str | None = None,
            key: str | None = None, server_name: str | None = None) -> grpc.Channel:
    if socket:
        return grpc.insecure_channel(f"unix:{socket}")
    if not address:
        raise InvalidArgument("give --socket PATH or --address HOST:PORT")
    if not (ca and cert and key):
        raise InvalidArgument("TCP needs mTLS: give --ca, --cert and --key")
    try:
        creds = grpc.ssl_channel_credentials(Path(ca).read_bytes(), Path(key).read_bytes(), Path(cert).read_bytes())
    except OSError as exc:
        raise InvalidArgument(f"cannot read {exc.filename}: {exc.strerror}") from None
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(address, creds, options=options)


def stub(ch: grpc.Channel) -> kms_pb2_grpc.KmsStub:
    return kms_pb2_grpc.KmsStub(ch)
