"""The contract check refuses what json_format would not print, and accepts what it would."""

import pytest

from services.shop_simulator.contract import PAYLOADS, ContractError, check_line, check_sample

GOOD = (b'{"eventId":"e1","eventTime":"2026-01-01T10:00:00.250Z","anonymousId":"a","countryCode":"DE",'
        b'"productView":{"product":{"productId":"SKU-00001"},"price":{"currencyCode":"EUR","amountMinor":"1999"}}}')


def test_canonical_line_passes():
    assert check_line(GOOD) == "productView"
    assert "refund" in PAYLOADS and "orderPlaced" in PAYLOADS and len(PAYLOADS) == 9


@pytest.mark.parametrize("line, message", [
    # int64 as a JSON number: parses, but json_format prints a string.
    (GOOD.replace(b'"1999"', b"1999"), "not the canonical JSON"),
    # A default value written out: json_format omits it.
    (GOOD.replace(b'"1999"', b'"0"'), "not the canonical JSON"),
    # Proto field names instead of the JSON names.
    (GOOD.replace(b'"eventId"', b'"event_id"'), "not the canonical JSON"),
    (GOOD.replace(b'"productView"', b'"wishlistAdd"'), "does not parse"),
    (b'{"eventId":"e1","eventTime":"2026-01-01T10:00:00Z"}', "no payload"),
])
def test_non_canonical_lines_are_refused(line, message):
    with pytest.raises(ContractError, match=message):
        check_line(line)


def test_sample_stops_once_every_payload_was_seen():
    seen = check_sample(iter([GOOD] * 5), limit=3)
    assert seen == {"productView"}
