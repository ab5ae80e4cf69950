"""RFC 7512 PKCS#11 URIs.

Only what a signer needs: token selection by label/serial/manufacturer/model, object selection by
label/id/type, and the module path. ``pin-value`` and ``slot-id`` are refused: PINs never travel in
a URI, and slot numbers change when SoftHSM reassigns slots.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from urllib.parse import quote, unquote_to_bytes

from ..errors import UsageError

_PATH_ATTRS = {
    "token": "token",
    "serial": "serial",
    "manufacturer": "manufacturer",
    "model": "model",
    "object": "object",
    "id": "id",
    "type": "type",
    "library-manufacturer": None,
    "library-description": None,
    "library-version": None,
    "slot-description": None,
    "slot-manufacturer": None,
}
_QUERY_ATTRS = {"module-path": "module_path", "module-name": None, "pin-source": None}
_TYPES = {"private", "public", "cert", "secret-key", "data"}
# Characters RFC 7512 allows unescaped in path values (pchar minus ';' and '/' handled by quote).
_SAFE = "-._~!$&'()*+=:@"


@dataclass(frozen=True)
class Pkcs11Uri:
    token: str | None = None
    serial: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    object: str | None = None
    id: bytes | None = None
    type: str | None = None
    module_path: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Pkcs11Uri":
        if not text.startswith("pkcs11:"):
            raise UsageError(f"not a PKCS#11 URI (must start with 'pkcs11:'): {_redact(text)}")
        body = text[len("pkcs11:"):]
        path, _, query = body.partition("?")
        values: dict[str, object] = {}
        for part, sep, table in ((path, ";", _PATH_ATTRS), (query, "&", _QUERY_ATTRS)):
            for item in filter(None, part.split(sep)):
                name, eq, raw = item.partition("=")
                if not eq:
                    raise UsageError(f"PKCS#11 URI attribute without a value: {name!r}")
                if name == "pin-value":
                    raise UsageError("PKCS#11 URI carries 'pin-value': PINs are never accepted in a URI "
                                     "(use --pin-file, --pin-env or the prompt)")
                if name == "slot-id":
                    raise UsageError("PKCS#11 URI selects a slot by number ('slot-id'): select the token "
                                     "by 'token=' label and/or 'serial=' instead")
                if name not in table and not name.startswith("x-"):
                    raise UsageError(f"unknown PKCS#11 URI attribute {name!r}")
                field = table.get(name)
                if field is None:
                    continue  # recognised but not used for selection, or vendor extension
                if field in values:
                    raise UsageError(f"PKCS#11 URI repeats attribute {name!r}")
                value = unquote_to_bytes(raw)
                try:
                    values[field] = value if field == "id" else value.decode("utf-8")
                except UnicodeDecodeError:
                    raise UsageError(f"PKCS#11 URI attribute {name!r} is not UTF-8 once unescaped") from None
        if values.get("type") is not None and values["type"] not in _TYPES:
            raise UsageError(f"unknown PKCS#11 object type {values['type']!r}")
        return cls(**values)  # type: ignore[arg-type]

    @property
    def token_only(self) -> "Pkcs11Uri":
        return Pkcs11Uri(token=self.token, serial=self.serial, manufacturer=self.manufacturer,
                         model=self.model, module_path=self.module_path)

    def with_object(self, label: str | None = None, key_id: bytes | None = None,
                    type: str | None = None) -> "Pkcs11Uri":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(object=label, id=key_id, type=type)
        return Pkcs11Uri(**values)

    def __str__(self) -> str:
        path = []
        for name, field in (("token", "token"), ("manufacturer", "manufacturer"), ("model", "model"),
                            ("serial", "serial"), ("object", "object"), ("type", "type")):
            value = getattr(self, field)
            if value is not None:
                path.append(f"{name}={quote(value, safe=_SAFE)}")
        if self.id is not None:
            path.append("id=" + "".join(f"%{b:02x}" for b in self.id))
        text = "pkcs11:" + ";".join(path)
        if self.module_path:
            text += "?module-path=" + quote(self.module_path, safe=_SAFE + "/")
        return text


def _redact(text: str) -> str:
    """Never echo something that may contain a PIN."""
    return text.split("?", 1)[0][:80] if "pin" not in text.lower() else "<redacted>"
