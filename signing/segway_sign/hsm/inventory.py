"""A description of everything a module offers: tokens, mechanisms, objects."""

from __future__ import annotations

from pkcs11 import Attribute, ObjectClass
from pkcs11.exceptions import PKCS11Error

from ..errors import SegwayError, TokenError
from . import module
from .module import describe
from .pin import PinSource
from .session import TokenSession, initialized
from .uri import Pkcs11Uri

_CLASSES = {ObjectClass.PRIVATE_KEY: "private", ObjectClass.PUBLIC_KEY: "public",
            ObjectClass.CERTIFICATE: "cert", ObjectClass.SECRET_KEY: "secret-key", ObjectClass.DATA: "data"}


def describe_module(module_path: str | None, pin: PinSource) -> dict:
    path = module.resolve(module_path)
    mod = module.load(path)
    with mod.lock:
        try:
            tokens = [t for t in mod.lib.get_tokens() if initialized(t)]
        except PKCS11Error as err:
            raise TokenError(f"cannot list tokens of {path}: {describe(err)}{mod.hint()}") from None
    if not tokens:
        mod.check_server()  # a remote module shows a dead server as no tokens at all
    have_pin = bool(pin.file or pin.env)
    report = {"module": path, "transport": mod.transport, "tokens": []}
    for tok in tokens:
        serial = tok.serial.decode(errors="replace").strip()
        uri = Pkcs11Uri(token=tok.label, serial=serial or None)
        with mod.lock:
            mechanisms = sorted(getattr(m, "name", hex(int(m))) for m in tok.slot.get_mechanisms())
        entry = {"label": tok.label, "serial": serial, "manufacturer": tok.manufacturer_id.strip(),
                 "model": tok.model.strip(), "uri": str(uri), "mechanisms": mechanisms, "objects": [],
                 "logged_in": False}
        try:
            session = TokenSession(mod, uri, pin, login=have_pin)
        except SegwayError:
            if have_pin:
                raise
            report["tokens"].append(entry)
            continue
        entry["logged_in"] = have_pin

        def list_objects(s):
            rows = []
            for obj in s.get_objects({}):
                cls = obj[Attribute.CLASS]
                if cls not in _CLASSES:
                    continue
                label = obj[Attribute.LABEL]
                key_id = obj[Attribute.ID] if cls != ObjectClass.DATA else b""
                row = {"class": _CLASSES[cls], "label": label, "id": key_id.hex(),
                       "uri": str(uri.with_object(label=label, key_id=key_id or None, type=_CLASSES[cls]))}
                if cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                    row["key_type"] = obj[Attribute.KEY_TYPE].name
                rows.append(row)
            return sorted(rows, key=lambda r: (r["label"], r["class"]))
        entry["objects"] = session.call(list_objects, f"listing objects of '{tok.label}'")
        report["tokens"].append(entry)
    return report
