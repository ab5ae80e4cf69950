"""TPM 2.0 backend (tpm2-pytss): `device:/dev/tpmrm0` (the fTPM in OP-TEE) on the device, swtpm in tests.

- The storage root key is a primary under the owner hierarchy, persisted at `srk_handle`.
- Ordinary keys are children of the SRK kept as wrapped blobs (TPM2B_PRIVATE + TPM2B_PUBLIC) in the
  key store; only the TPM can load them. Keys created with persistent=True (the CA and audit keys) are
  moved into persistent handles with EvictControl and never exist outside the TPM at all.
- One ESAPI context, used under one lock: ESAPI is single-threaded, and without a resource manager
  (swtpm) only three objects fit in the TPM at once, so loaded keys sit in a two-entry LRU cache. The lock
  is granted in arrival order (fifolock.py), so concurrent requests wait their turn.
"""
from __future__ import annotations

import collections
import json
import logging

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss._libtpm2_pytss import ffi
from tpm2_pytss.constants import (ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_HT, TPM2_RC, TPM2_RH, TPM2_SE, TPM2_ST,
                                  TPMA_OBJECT, TSS2_RC)
from tpm2_pytss.types import (TPM2B_AUTH, TPM2B_DATA, TPM2B_DIGEST, TPM2B_ENCRYPTED_SECRET, TPM2B_ID_OBJECT,
                              TPM2B_NONCE, TPM2B_NV_PUBLIC, TPM2B_PRIVATE, TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE,
                              TPMS_NV_PUBLIC, TPMT_SIG_SCHEME, TPMT_SYM_DEF, TPMT_TK_HASHCHECK)
from tpm2_pytss.utils import NoSuchIndex, create_ek_template

from segway_kms.audit.anchor import ANCHOR_ATTRIBUTES, DEFAULT_ANCHOR_INDEX, is_anchor_index
from segway_kms.backends.base import check_algorithm, hash_for_digest
from segway_kms.backends.fifolock import FifoRLock
from segway_kms.errors import BackendError, ConfigError, FailedPrecondition, InvalidArgument, NotFound

log = logging.getLogger(__name__)

_TEMPLATES = {"EC_P256": "ecc256", "EC_P384": "ecc384", "RSA_2048": "rsa2048", "RSA_3072": "rsa3072"}
_HASH_ALG = {"sha256": TPM2_ALG.SHA256, "sha384": TPM2_ALG.SHA384, "sha512": TPM2_ALG.SHA512}
_SIGNING = (TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
            | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.NODA)
_SRK = (TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.USERWITHAUTH
        | TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT | TPMA_OBJECT.NODA)
# Restricted signing keys need a null symmetric scheme (the TPM rejects anything else).
_AK = _SRK & ~TPMA_OBJECT.DECRYPT | TPMA_OBJECT.SIGN_ENCRYPT
_PERSISTENT_BASE = 0x81010010
_CACHE_SIZE = 2
# TCG EK credential profile: low-range indices first, then the high range swtpm_setup --ecc uses (P-384)
# Low-range EKs first: their policy (PolicySecret of the endorsement hierarchy) is what activation uses.
_EK_TYPES = ("EK-ECC256", "EK-RSA2048", "EK-HIGH-ECC256", "EK-HIGH-ECC384", "EK-HIGH-RSA2048")


def _spki(public: TPM2B_PUBLIC) -> bytes:
    return serialization.load_pem_public_key(public.to_pem()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _signature_bytes(sig, ec: bool) -> bytes:
    """A TPMT_SIGNATURE as an ECDSA DER signature or the RSA signature bytes.

    Read from the C structure as tpm2-pytss itself reads it (its _cdata, ffi.buffer): going through its
    attribute wrappers costs tens of µs per signature here, more than the rest of the daemon's own work."""
    signature = sig._cdata.signature
    if ec:
        r, s = signature.ecdsa.signatureR, signature.ecdsa.signatureS
        return encode_dss_signature(int.from_bytes(ffi.buffer(r.buffer, r.size), "big"),
                                    int.from_bytes(ffi.buffer(s.buffer, s.size), "big"))
    rsa = signature.rsassa.sig  # RSASSA and RSAPSS share the layout (TPMS_SIGNATURE_RSA)
    return ffi.buffer(rsa.buffer, rsa.size)[:]


def _connection_lost(exc: TSS2_Exception) -> bool:
    # TCTI-layer errors (socket/device I/O) and the ESAPI "bad sequence" state they leave behind.
    return (exc.rc & TSS2_RC.RC_LAYER_MASK) == TSS2_RC.TCTI_RC_LAYER or exc.rc == TSS2_RC.ESYS_RC_BAD_SEQUENCE


class TpmBackend:
    name = "tpm"
    supports_attestation = True

    def __init__(self, cfg: dict):
        tcti = cfg.get("tcti")
        if not tcti:
            raise ConfigError("backend: tpm needs 'tcti' (e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321)")
        self._tcti = tcti
        # NV index of the audit anchor (audit/anchor.py); 0 or null in the config turns the anchor off.
        self.anchor_index = int(cfg.get("audit_anchor_index", DEFAULT_ANCHOR_INDEX) or 0) or None
        self._flush_transient = cfg.get("flush_transient", not tcti.startswith("device:"))
        self._lock = FifoRLock()
        self._srk_handle = int(cfg.get("srk_handle", 0x81000001))
        self._cache: collections.OrderedDict[bytes, ESYS_TR] = collections.OrderedDict()
        self._schemes: dict[tuple, TPMT_SIG_SCHEME] = {}
        # The NULL hash-check ticket is spelled out: tpm2-pytss 2.x (scarthgap) has no default for it.
        self._null_ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)
        self._persistent: dict[int, ESYS_TR] = {}
        self._ectx: ESAPI | None = None
        with self._lock:
            try:
                self._connect()
            except TSS2_Exception as exc:
                raise ConfigError(f"cannot open the TPM through {tcti!r}: {exc}") from None

    def _connect(self) -> None:
        """Open a fresh ESAPI context: at start, and again after the connection to the TPM was lost."""
        ectx = ESAPI(self._tcti)
        self._ectx = ectx
        try:
            if self._flush_transient:
                # Without a resource manager, objects left loaded by a killed process (or a dropped
                # connection) fill the TPM's few object slots.
                for handle in self._handles(TPM2_HT.TRANSIENT):
                    ectx.flush_context(ectx.tr_from_tpmpublic(handle))
            self._srk = self._ensure_srk()
        except BaseException:
            self._disconnect()
            raise

    def _disconnect(self) -> None:
        # Handles of the old context mean nothing in a new one; the TPM may have been reset as well.
        self._cache.clear()
        self._persistent.clear()
        ectx, self._ectx = self._ectx, None
        if ectx is not None:
            try:
                ectx.close()
            except Exception:  # noqa: BLE001 - the context is being thrown away
                pass

    # -- helpers --------------------------------------------------------------------------------------------
    def _handles(self, kind) -> list[int]:
        _more, data = self._ectx.get_capability(TPM2_CAP.HANDLES, kind << 24, 256)
        return list(data.data.handles)

    def _ensure_srk(self) -> ESYS_TR:
        if self._srk_handle in self._handles(TPM2_HT.PERSISTENT):
            return self._ectx.tr_from_tpmpublic(self._srk_handle)
        transient, *_ = self._ectx.create_primary(None, TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=_SRK))
        persistent = self._ectx.evict_control(ESYS_TR.OWNER, transient, self._srk_handle)
        self._ectx.flush_context(transient)
        log.info("created the storage root key at 0x%08x", self._srk_handle)
        return persistent

    def _guard(self, what: str, fn):
        """Run fn under the lock; if the TPM connection is gone, reconnect and run it once more.

        A TCTI I/O failure leaves the ESAPI context unusable (every later call fails with "bad sequence"),
        so the context is replaced. An operation that fails twice, or fails for any other TPM reason,
        becomes a BackendError (UNAVAILABLE to clients; health turns NOT_SERVING until the TPM is back).
        """
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._ectx is None:
                        self._connect()
                        log.warning("reconnected to the TPM through %s", self._tcti)
                    return fn()
                except TSS2_Exception as exc:
                    if _connection_lost(exc):
                        self._disconnect()
                        if attempt == 1:
                            continue
                        raise BackendError(f"TPM unreachable through {self._tcti} while {what}: {exc}") from None
                    raise BackendError(f"TPM error while {what}: {exc}") from None

    def _evict_cache(self, keep: int):
        while len(self._cache) > keep:
            _ref, handle = self._cache.popitem(last=False)
            self._ectx.flush_context(handle)

    def _handle(self, ref: bytes) -> ESYS_TR:
        handle = self._cache.get(ref)
        if handle is not None:
            self._cache.move_to_end(ref)
            return handle
        desc = json.loads(ref)
        if desc["t"] == "persistent":
            # Persistent objects take no transient slot; their ESYS_TR stays valid until evicted.
            handle = self._persistent.get(desc["handle"])
            if handle is None:
                if desc["handle"] not in self._handles(TPM2_HT.PERSISTENT):
                    raise NotFound("persistent key missing from the TPM")
                handle = self._persistent[desc["handle"]] = self._ectx.tr_from_tpmpublic(desc["handle"])
            return handle
        self._evict_cache(_CACHE_SIZE - 1)
        priv, _ = TPM2B_PRIVATE.unmarshal(bytes.fromhex(desc["priv"]))
        pub, _ = TPM2B_PUBLIC.unmarshal(bytes.fromhex(desc["pub"]))
        handle = self._ectx.load(self._srk, priv, pub)
        self._cache[ref] = handle
        return handle

    # -- Backend --------------------------------------------------------------------------------------------
    def create_key(self, algorithm: str, *, persistent: bool = False):
        check_algorithm(algorithm)
        template = TPM2B_PUBLIC.parse(_TEMPLATES[algorithm], objectAttributes=_SIGNING)

        def create():
            # TPM2_Create needs a free object slot for the new key next to the (persistent) parent.
            self._evict_cache(_CACHE_SIZE - 1)
            priv, pub, *_ = self._ectx.create(self._srk, TPM2B_SENSITIVE_CREATE(), template)
            if not persistent:
                return json.dumps({"t": "blob", "priv": priv.marshal().hex(), "pub": pub.marshal().hex()}).encode(), pub
            used = set(self._handles(TPM2_HT.PERSISTENT))
            slot = next(h for h in range(_PERSISTENT_BASE, _PERSISTENT_BASE + 0x100) if h not in used)
            self._evict_cache(_CACHE_SIZE - 1)
            loaded = self._ectx.load(self._srk, priv, pub)
            try:
                self._ectx.evict_control(ESYS_TR.OWNER, loaded, slot)
            finally:
                self._ectx.flush_context(loaded)
            return json.dumps({"t": "persistent", "handle": slot, "pub": pub.marshal().hex()}).encode(), pub

        ref, pub = self._guard("creating a key", create)
        return ref, _spki(pub)

    def _sig_scheme(self, ec: bool, scheme: str, hash_name: str) -> TPMT_SIG_SCHEME:
        # Built once per combination: tpm2-pytss structure construction costs more than the lookup.
        key = (ec, scheme, hash_name)
        sig_scheme = self._schemes.get(key)
        if sig_scheme is None:
            alg = TPM2_ALG.ECDSA if ec else (TPM2_ALG.RSAPSS if scheme == "pss" else TPM2_ALG.RSASSA)
            sig_scheme = TPMT_SIG_SCHEME(scheme=alg)
            sig_scheme.details.any.hashAlg = _HASH_ALG[hash_name]
            self._schemes[key] = sig_scheme
        return sig_scheme

    def sign_digest(self, ref: bytes, algorithm: str, digest: bytes, scheme: str) -> bytes:
        ec = algorithm.startswith("EC")
        tpm_digest = TPM2B_DIGEST(digest)
        sig_scheme = self._sig_scheme(ec, scheme, hash_for_digest(digest))
        # Only the TPM command holds the lock; building its input and reading its output do not.
        sig = self._guard("signing", lambda: self._ectx.sign(self._handle(ref), tpm_digest, sig_scheme,
                                                               self._null_ticket))
        return _signature_bytes(sig, ec)

    def destroy_key(self, ref: bytes) -> None:
        desc = json.loads(ref)

        def destroy():
            handle = self._cache.pop(ref, None)
            if handle is not None:
                self._ectx.flush_context(handle)
            self._persistent.pop(desc.get("handle"), None)
            if desc["t"] == "persistent" and desc["handle"] in self._handles(TPM2_HT.PERSISTENT):
                self._ectx.evict_control(ESYS_TR.OWNER, self._ectx.tr_from_tpmpublic(desc["handle"]), desc["handle"])
            # A wrapped blob is useless once the store forgets it; nothing lives in the TPM to delete.

        self._guard("destroying a key", destroy)

    def random(self, length: int) -> bytes:
        def rand():
            out = b""
            while len(out) < length:
                out += bytes(self._ectx.get_random(min(32, length - len(out))))
            return out
        return self._guard("reading random bytes", rand)

    def healthy(self) -> bool:
        try:
            self._guard("health check", lambda: self._ectx.get_random(1))
            return True
        except Exception:  # noqa: BLE001 - any failure means "not serving"
            return False

    def close(self) -> None:
        with self._lock:
            if self._ectx is not None:
                try:
                    self._evict_cache(0)
                except TSS2_Exception:
                    pass  # the TPM is gone; nothing left to flush
            self._disconnect()

    # -- audit anchor ---------------------------------------------------------------------------------------
    def _anchor_index(self, index: int, create: bool):
        """ESYS_TR of the anchor NV index, defined on first use; None if absent and not created."""
        tr = self._persistent.get(index)
        if tr is not None:
            return tr
        if index in self._handles(TPM2_HT.NV_INDEX):
            tr = self._ectx.tr_from_tpmpublic(index)
            public, _name = self._ectx.nv_read_public(tr)
            if not is_anchor_index(public.nvPublic):
                raise FailedPrecondition(f"NV index 0x{index:08x} exists but is not a segway audit anchor")
        elif create:
            tr = self._ectx.nv_define_space(TPM2B_AUTH(), TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
                nvIndex=index, nameAlg=TPM2_ALG.SHA256, attributes=ANCHOR_ATTRIBUTES, dataSize=32)),
                auth_handle=ESYS_TR.OWNER)
            log.info("defined the audit anchor NV index 0x%08x", index)
        else:
            return None
        self._persistent[index] = tr
        return tr

    def anchor_read(self, index: int) -> bytes | None:
        """The anchor's value: None if the index does not exist, 32 zero bytes before the first extend."""
        def run():
            tr = self._anchor_index(index, create=False)
            if tr is None:
                return None
            try:
                return bytes(self._ectx.nv_read(tr, 32, 0, auth_handle=ESYS_TR.OWNER))
            except TSS2_Exception as exc:
                if exc.rc == TPM2_RC.NV_UNINITIALIZED:
                    return bytes(32)
                raise
        return self._guard("reading the audit anchor", run)

    def anchor_extend(self, index: int, data: bytes) -> None:
        self._guard("extending the audit anchor",
                    lambda: self._ectx.nv_extend(self._anchor_index(index, create=True), data,
                                                 auth_handle=ESYS_TR.OWNER))

    def anchor_certify(self, index: int, nonce: bytes) -> dict:
        """TPM2_NV_Certify of the whole anchor by the attestation key (see attest())."""
        def run():
            tr = self._anchor_index(index, create=False)
            if tr is None:
                raise FailedPrecondition("the audit anchor does not exist yet")
            self._evict_cache(_CACHE_SIZE - 1)  # the AK needs an object slot
            ak, ak_public = self._attestation_key()
            try:
                info, signature = self._ectx.nv_certify(
                    sign_handle=ak, nv_index=tr, qualifying_data=TPM2B_DATA(nonce),
                    in_scheme=TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL), size=32, offset=0, auth_handle=ESYS_TR.OWNER)
            except TSS2_Exception as exc:
                if exc.rc == TPM2_RC.NV_UNINITIALIZED:
                    raise FailedPrecondition("the audit anchor holds no entries yet") from None
                raise
            finally:
                self._ectx.flush_context(ak)
            public, _name = self._ectx.nv_read_public(tr)
            return {"nv_index": index, "nv_public_area": public.marshal(), "certify_info": bytes(info),
                    "certify_signature": signature.marshal(), "ak_public_area": ak_public.marshal()}
        return self._guard("certifying the audit anchor", run)

    # -- attestation ----------------------------------------------------------------------------------------
    def _nv_read(self, index: int) -> bytes:
        if index not in self._handles(TPM2_HT.NV_INDEX):
            raise NoSuchIndex(index)
        tr = self._ectx.tr_from_tpmpublic(index)
        public, _name = self._ectx.nv_read_public(tr)
        size = public.nvPublic.dataSize
        out = b""
        while len(out) < size:
            out += bytes(self._ectx.nv_read(tr, min(512, size - len(out)), len(out), auth_handle=ESYS_TR.OWNER))
        return out

    def _endorsement_key(self):
        """(EK certificate DER, EK template) for the first EK type whose certificate the TPM carries."""
        for ek_type in _EK_TYPES:
            try:
                cert, template = create_ek_template(ek_type, self._nv_read)
            except (NoSuchIndex, ValueError):
                continue
            if cert:
                return cert, template
        return None, None

    def _attestation_key(self):
        ak, ak_public, *_ = self._ectx.create_primary(
            None, TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=_AK), ESYS_TR.ENDORSEMENT)
        return ak, ak_public

    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """TPM2_ActivateCredential with the AK as the activated object and the EK as the decryption key.

        The EK's authorisation policy (TCG EK profile, policy A) is PolicySecret(TPM_RH_ENDORSEMENT).
        """
        try:
            blob, blob_end = TPM2B_ID_OBJECT.unmarshal(credential_blob)
            secret, secret_end = TPM2B_ENCRYPTED_SECRET.unmarshal(encrypted_secret)
        except Exception:  # noqa: BLE001 - malformed input from the client
            raise InvalidArgument("malformed credential blob or secret") from None
        if blob_end != len(credential_blob) or secret_end != len(encrypted_secret):
            raise InvalidArgument("malformed credential blob or secret: bytes after the structure")

        def run():
            _cert, template = self._endorsement_key()
            if template is None:
                raise FailedPrecondition("the TPM carries no EK certificate")
            self._evict_cache(0)
            ak, _ak_public = self._attestation_key()
            ek = session = None
            try:
                ek, *_ = self._ectx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
                session = self._ectx.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY,
                                                        TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)
                # No nonce, cpHash or policyRef, no expiry; tpm2-pytss 2.x has no defaults for them.
                self._ectx.policy_secret(ESYS_TR.ENDORSEMENT, session, TPM2B_NONCE(), TPM2B_DIGEST(), TPM2B_NONCE(), 0)
                try:
                    return bytes(self._ectx.activate_credential(ak, ek, blob, secret, session1=ESYS_TR.PASSWORD,
                                                                session2=session))
                except TSS2_Exception:
                    raise InvalidArgument("the credential was not made for this TPM's EK and AK") from None
            finally:
                for handle in (session, ek, ak):
                    if handle is not None:
                        self._ectx.flush_context(handle)

        return self._guard("activating a credential", run)

    def attest(self, ref: bytes, nonce: bytes, pcrs: list[int]) -> dict:
        """TPM2_Certify of the key and TPM2_Quote over the PCRs, both by an attestation key (AK).

        The AK is a restricted signing primary under the endorsement hierarchy from a fixed template, so
        it is the same key on every call for a given TPM and can be pinned by a verifier at enrolment.
        """
        def run():
            self._evict_cache(0)
            key = self._handle(ref)
            ak, ak_public = self._attestation_key()
            try:
                certify_info, certify_sig = self._ectx.certify(key, ak, TPM2B_DATA(nonce),
                                                               TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
                selection = "sha256:" + ",".join(str(p) for p in pcrs)
                quote_info, quote_sig = self._ectx.quote(ak, selection, TPM2B_DATA(nonce))
                _counter, _sel, values = self._ectx.pcr_read(selection)
            finally:
                self._ectx.flush_context(ak)
            key_public, _name, _qname = self._ectx.read_public(key)
            ek_cert, ek_template = self._endorsement_key()
            ek_public = b""
            if ek_template is not None:
                ek, ek_pub, *_ = self._ectx.create_primary(None, ek_template, ESYS_TR.ENDORSEMENT)
                self._ectx.flush_context(ek)
                ek_public = ek_pub.marshal()
            # pcr_read returns the values in ascending PCR order
            digests = [bytes(d) for d in values.digests]
            return {
                "certify_info": bytes(certify_info), "certify_signature": certify_sig.marshal(),
                "quote_info": bytes(quote_info), "quote_signature": quote_sig.marshal(),
                "key_public_area": key_public.marshal(), "ak_public_area": ak_public.marshal(),
                "pcr_values": dict(zip(sorted(pcrs), digests)), "ek_certificate_der": ek_cert or b"",
                "ek_public_area": ek_public,
            }

        return self._guard("attesting a key", run)
