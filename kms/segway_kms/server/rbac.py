"""Role-based access control: role x operation x namespace (tenant).

Roles are ordered user < operator < admin; a principal holds one role per tenant, or "*" for every tenant.
CA operations live in the "ca" namespace and the audit export in "audit".
"""
from __future__ import annotations

from segway_kms.errors import PermissionDenied, clip

RANK = {"user": 1, "operator": 2, "admin": 3}

# RPC method -> (minimum role, how to find the namespaces from the request)
OPERATIONS = {
    "GenerateKey": ("operator", lambda r: [_tenant(r.name)]),
    "ListKeys": ("user", lambda r: [r.tenant]),
    "GetKey": ("user", lambda r: [_tenant(r.name)]),
    "GetPublicKey": ("user", lambda r: [_tenant(r.name)]),
    "Sign": ("user", lambda r: [_tenant(r.key.name)]),
    "Verify": ("user", lambda r: [_tenant(r.key.name)]),
    "RotateKey": ("operator", lambda r: [_tenant(r.name)]),
    "DisableKey": ("operator", lambda r: [_tenant(r.name)]),
    "EnableKey": ("operator", lambda r: [_tenant(r.name)]),
    "DestroyKey": ("admin", lambda r: [_tenant(r.name)]),
    "InitCa": ("admin", lambda r: ["ca"]),
    "InstallCaCertificate": ("admin", lambda r: ["ca"]),
    "GetCaCertificate": (None, lambda r: []),
    "GetCrl": (None, lambda r: []),
    "SignCsr": ("operator", lambda r: ["ca"]),
    "IssueCertificate": ("operator", lambda r: ["ca", _tenant(r.key_name)]),
    "Revoke": ("operator", lambda r: ["ca"]),
    "Attest": ("user", lambda r: [_tenant(r.key.name)]),
    "ActivateCredential": (None, lambda r: []),  # per TPM, not per tenant: any known principal
    "GetRandom": (None, lambda r: []),
    "ExportAudit": ("admin", lambda r: ["audit"]),
}


def _tenant(name: str) -> str:
    return name.split("/", 1)[0] if "/" in name else name


class Rbac:
    def __init__(self, principals: dict[str, dict[str, str]]):
        self._principals = principals

    def role(self, principal: str, namespace: str) -> int:
        roles = self._principals.get(principal, {})
        return max(RANK.get(roles.get(namespace, ""), 0), RANK.get(roles.get("*", ""), 0))

    def check(self, principal: str, method: str, request) -> None:
        if principal not in self._principals:
            raise PermissionDenied(f"principal '{clip(principal)}' has no role in this KMS")
        try:
            minimum, namespaces = OPERATIONS[method]
        except KeyError:
            raise PermissionDenied(f"operation {method} is not permitted") from None
        if minimum is None:
            return
        for ns in namespaces(request):
            if not ns or ns.startswith("_"):
                raise PermissionDenied(f"namespace '{clip(ns)}' is not accessible")
            if self.role(principal, ns) < RANK[minimum]:
                raise PermissionDenied(f"{clip(principal)} may not {method} in '{clip(ns)}' (needs {minimum})")
