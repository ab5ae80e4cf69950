import pytest

from segway_sign.errors import UsageError
from segway_sign.hsm.uri import Pkcs11Uri


def test_parses_path_and_query_attributes():
    uri = Pkcs11Uri.parse("pkcs11:token=My%20Token;serial=abc;object=fit-key;id=%01%ff;type=private"
                          "?module-path=/usr/lib/x.so")
    assert (uri.token, uri.serial, uri.object, uri.id, uri.type) == ("My Token", "abc", "fit-key", b"\x01\xff", "private")
    assert uri.module_path == "/usr/lib/x.so"


def test_round_trip_is_stable():
    text = "pkcs11:token=a%3bb;object=k%20ey;id=%00%10?module-path=/m.so"
    assert Pkcs11Uri.parse(str(Pkcs11Uri.parse(text))) == Pkcs11Uri.parse(text)


@pytest.mark.parametrize("text, message", [
    ("pkcs11:token=t;object=k?pin-value=1234", "pin-value"),
    ("pkcs11:slot-id=3;object=k", "slot"),
    ("pkcs11:token=t;bogus=1", "unknown"),
    ("token=t;object=k", "pkcs11:"),
    ("pkcs11:token=t;token=u", "repeats"),
    ("pkcs11:token=t;type=nonsense", "type"),
    ("pkcs11:token", "without a value"),
])
def test_refuses_unsafe_or_malformed(text, message):
    with pytest.raises(UsageError, match=message):
        Pkcs11Uri.parse(text)


def test_error_never_echoes_a_pin():
    with pytest.raises(UsageError) as err:
        Pkcs11Uri.parse("pkcs11:token=t?pin-value=s3cr3t")
    assert "s3cr3t" not in str(err.value)


def test_vendor_attributes_are_ignored():
    assert Pkcs11Uri.parse("pkcs11:token=t;x-vendor=1;object=k").object == "k"


def test_attribute_that_is_not_utf8_is_a_usage_error():
    with pytest.raises(UsageError, match="'token' is not UTF-8"):
        Pkcs11Uri.parse("pkcs11:token=%ff;object=k")
