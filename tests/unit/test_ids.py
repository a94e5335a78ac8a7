import uuid

from services.common.ids import parse_uuid, uuid7


def test_uuid7_has_version_7_and_rfc_variant() -> None:
    value = uuid7()
    assert value.version == 7
    assert value.variant == uuid.RFC_4122


def test_uuid7_is_ordered_within_one_process() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_parse_uuid_accepts_only_canonical_text() -> None:
    value = uuid7()
    assert parse_uuid(str(value)) == value
    assert parse_uuid("not-a-uuid") is None
    assert parse_uuid(value.hex) is None  # 32 characters, not canonical
    assert parse_uuid("") is None
