"""The API key format: generation, checksum, short id, hashing."""

from __future__ import annotations

import hashlib
import hmac
import re
import time

import pytest

from interlock.auth.keys import (
    ALPHABET,
    KEY_LENGTH,
    KeyHasher,
    generate_key,
    has_valid_checksum,
    hash_key,
    keys_match,
    short_id,
)

SECRET = b"0123456789abcdef0123456789abcdef"
FORMAT = re.compile(r"il_(live|test)_[0-9A-Za-z]{38}")


@pytest.mark.parametrize("kind", ["live", "test"])
def test_generated_keys_have_the_documented_shape(kind: str) -> None:
    key = generate_key(kind)  # type: ignore[arg-type]
    assert FORMAT.fullmatch(key)
    assert key.startswith(f"il_{kind}_")
    assert len(key) == KEY_LENGTH == 46
    assert has_valid_checksum(key)


def test_default_kind_is_live() -> None:
    assert generate_key().startswith("il_live_")


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        generate_key("prod")  # type: ignore[arg-type]


def test_keys_are_random_over_the_whole_alphabet() -> None:
    # 32 base62 symbols carry 190 bits; 2000 keys must all differ and use every symbol.
    keys = [generate_key() for _ in range(2000)]
    assert len(set(keys)) == len(keys)
    randoms = [key[8:40] for key in keys]
    # 64,000 draws from 62 symbols: every symbol shows up, none dominates (expected ~1032).
    counts = dict.fromkeys(ALPHABET, 0)
    for random_part in randoms:
        for symbol in random_part:
            counts[symbol] += 1
    assert min(counts.values()) > 700
    assert max(counts.values()) < 1400


def test_every_single_character_typo_is_caught() -> None:
    key = generate_key()
    for position in range(len("il_live_"), len(key)):
        for replacement in ALPHABET:
            if replacement == key[position]:
                continue
            typo = key[:position] + replacement + key[position + 1 :]
            assert not has_valid_checksum(typo), (position, replacement)


def test_every_adjacent_transposition_is_caught() -> None:
    key = generate_key()
    for position in range(len("il_live_"), len(key) - 1):
        if key[position] == key[position + 1]:
            continue
        swapped = key[:position] + key[position + 1] + key[position] + key[position + 2 :]
        assert not has_valid_checksum(swapped), position


def test_a_dropped_or_added_character_or_changed_prefix_is_caught() -> None:
    key = generate_key()
    assert not has_valid_checksum(key[:-1])
    assert not has_valid_checksum(key + "a")
    assert not has_valid_checksum("il_test_" + key[8:])
    assert not has_valid_checksum("IL_live_" + key[8:])


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "il_",
        "il_live_",
        "sk-" + "a" * 43,
        "il_live_" + "é" * 38,
        "il_live_" + "１" * 38,  # noqa: RUF001 - full-width digits: alphanumeric, not ASCII
        "il_live_" + "'" * 38,
        "il_live_" + "\x00" * 38,
        "il_live_" + "\ud800" * 38,
        "il_live_" + "a" * 37 + "\n",
    ],
)
def test_garbage_is_rejected_without_raising(garbage: str) -> None:
    assert has_valid_checksum(garbage) is False


@pytest.mark.parametrize("not_a_string", [None, b"il_live_" + b"a" * 38, 46, ["il_live_"]])
def test_non_strings_are_rejected_without_raising(not_a_string: object) -> None:
    assert has_valid_checksum(not_a_string) is False  # type: ignore[arg-type]


def test_huge_input_is_rejected_at_once() -> None:
    huge = "il_live_" + "a" * 10_000_000
    started = time.perf_counter()
    for _ in range(1000):
        assert not has_valid_checksum(huge)
    assert time.perf_counter() - started < 0.1


def test_short_id_is_the_prefix_and_first_eight_random_characters() -> None:
    key = generate_key("test")
    assert short_id(key) == key[:16]
    assert re.fullmatch(r"il_test_[0-9A-Za-z]{8}", short_id(key))


@pytest.mark.parametrize("not_ours", ["a-long-operator-chosen-admin-key-123", "il_live_short"])
def test_short_id_refuses_to_reveal_part_of_a_foreign_secret(not_ours: str) -> None:
    with pytest.raises(ValueError, match="not an Interlock API key"):
        short_id(not_ours)


def test_hash_is_hmac_sha256_under_the_server_secret() -> None:
    key = generate_key()
    digest = hash_key(SECRET, key)
    assert len(digest) == 32
    assert digest == hmac.new(SECRET, key.encode(), hashlib.sha256).digest()
    assert hash_key(SECRET, key) == digest
    assert hash_key(b"another-secret-0123456789abcdef0", key) != digest
    assert hash_key(SECRET, generate_key()) != digest


def test_hash_accepts_any_string() -> None:
    for odd in ("", "\x00", "\ud800", "é" * 10_000, "'; DROP TABLE api_keys; --"):
        assert len(hash_key(SECRET, odd)) == 32


@pytest.mark.parametrize("secret", [SECRET, b"", b"s" * 63, b"s" * 64, b"s" * 65, SECRET * 10])
def test_a_key_hasher_hashes_as_hash_key_does(secret: bytes) -> None:
    """Secrets shorter than, as long as and longer than SHA-256's 64-byte block."""
    hasher = KeyHasher(secret)
    for key in (generate_key(), generate_key(), "", "\ud800", "é" * 1000):
        assert hasher(key) == hash_key(secret, key)  # and again: its keyed state is reused
        assert hasher(key) == hash_key(secret, key)


def test_keys_match_compares_digests() -> None:
    digest = hash_key(SECRET, "one")
    assert keys_match(digest, hash_key(SECRET, "one"))
    assert not keys_match(digest, hash_key(SECRET, "two"))
    assert not keys_match(digest, digest[:16])
