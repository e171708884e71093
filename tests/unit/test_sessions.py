"""Session tokens (JWTs): HS256 with a shared secret, RS256/ES256 against a JWKS served by a
real aiohttp server on 127.0.0.1, and every way a token can be wrong."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.warnings import InsecureKeyLengthWarning

from interlock.auth.authenticator import Authenticator
from interlock.auth.jwks import JwksClient
from interlock.auth.principal import Scope
from interlock.auth.sessions import SessionVerifier, looks_like_jwt
from interlock.auth.tiers import Tiers
from interlock.errors import AuthenticationFailed, ServiceUnavailable
from interlock.settings import ConfigError, JwtSettings, TierConfig, load_settings
from interlock.store.users import UserRecord

pytestmark = pytest.mark.anyio

SECRET = "a-shared-nextauth-secret-of-enough-length-0123456789"
AUDIENCE = "interlock"
ISSUER = "https://id.example.com/"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class Keys:
    rsa: rsa.RSAPrivateKey
    other_rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey

    def rsa_jwk(self, kid: str, key: rsa.RSAPrivateKey | None = None, **extra: Any) -> Any:
        public = (key or self.rsa).public_key()
        return {**RSAAlgorithm.to_jwk(public, as_dict=True), "kid": kid, "use": "sig", **extra}

    def ec_jwk(self, kid: str) -> Any:
        return {**ECAlgorithm.to_jwk(self.ec.public_key(), as_dict=True), "kid": kid}

    @property
    def rsa_public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        other_rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec=ec.generate_private_key(ec.SECP256R1()),
    )


@dataclass
class JwksServer:
    """A JWKS endpoint whose keys and status the test changes; it counts its requests."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    requests: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.status != 200:
            return web.Response(status=self.status, text="down")
        return web.json_response({"keys": self.keys})


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server.url = f"http://{host}:{port}/.well-known/jwks.json"
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(
    *,
    secret: str | None = None,
    jwks_url: str | None = None,
    algorithms: tuple[str, ...] = ("HS256",),
    audience: tuple[str, ...] = (AUDIENCE,),
    issuer: str | None = ISSUER,
) -> JwtSettings:
    return JwtSettings(
        secret=secret,
        jwks_url=jwks_url,
        algorithms=algorithms,
        audience=audience,
        issuer=issuer,
        create_users=False,
        leeway=30.0,
    )


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "user-123",
        "aud": AUDIENCE,
        "iss": ISSUER,
        "iat": now,
        "exp": now + 300,
        "name": "Ada Lovelace",
        "email": "ada@example.com",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A token signed (HMAC-SHA-256) with any bytes as the key, or unsigned."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if key is None:
        return signing_input + "."
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def hs256(**overrides: Any) -> str:
    return jwt.encode(claims(**overrides), SECRET, algorithm="HS256")


async def refused(verifier: SessionVerifier, token: str) -> str:
    with pytest.raises(AuthenticationFailed) as caught:
        await verifier.verify(token)
    assert caught.value.status == 401
    assert token not in caught.value.message
    return caught.value.message


# --- HS256 with a shared secret ---------------------------------------------------------


async def test_a_valid_hs256_session_gives_its_subject() -> None:
    verifier = SessionVerifier(settings(secret=SECRET), None)
    session = await verifier.verify(hs256())
    assert (session.subject, session.name, session.email) == (
        "user-123",
        "Ada Lovelace",
        "ada@example.com",
    )


async def test_expiry_is_checked_with_a_small_leeway() -> None:
    verifier = SessionVerifier(settings(secret=SECRET), None)
    now = int(time.time())
    assert (await verifier.verify(hs256(exp=now - 10))).subject == "user-123"
    assert "expired" in await refused(verifier, hs256(exp=now - 120))
    await refused(verifier, hs256(nbf=now + 120))
    assert (await verifier.verify(hs256(nbf=now + 10))).subject == "user-123"


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"aud": "someone-else"}, "wrong audience"),
        ({"aud": None}, "no audience"),
        ({"iss": "https://evil.example.com/"}, "wrong issuer"),
        ({"iss": None}, "no issuer"),
        ({"exp": None}, "no expiry"),
        ({"sub": None}, "no subject"),
        ({"sub": 42}, "a subject that is not text"),
        ({"sub": ""}, "an empty subject"),
        ({"sub": "x" * 300}, "a subject too long to be an id"),
        ({"sub": "tab\there"}, "a subject with a control character"),
        ({"exp": "tomorrow"}, "an expiry that is not a number"),
    ],
)
async def test_claims_that_do_not_check_out_are_refused(
    overrides: dict[str, Any], why: str
) -> None:
    verifier = SessionVerifier(settings(secret=SECRET), None)
    await refused(verifier, hs256(**overrides))


async def test_a_token_with_an_audience_is_refused_when_none_is_configured() -> None:
    verifier = SessionVerifier(settings(secret=SECRET, audience=(), issuer=None), None)
    await refused(verifier, hs256())
    assert (await verifier.verify(hs256(aud=None, iss=None))).subject == "user-123"


async def test_any_of_several_audiences_is_accepted() -> None:
    verifier = SessionVerifier(settings(secret=SECRET, audience=("web", AUDIENCE)), None)
    assert (await verifier.verify(hs256(aud=["other", AUDIENCE]))).subject == "user-123"


async def test_a_token_signed_with_another_secret_is_refused() -> None:
    verifier = SessionVerifier(settings(secret=SECRET), None)
    forged = jwt.encode(claims(), "another-secret-that-is-also-long-enough-012345", "HS256")
    await refused(verifier, forged)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
async def test_unsigned_tokens_are_refused(alg: str) -> None:
    verifier = SessionVerifier(settings(secret=SECRET), None)
    message = await refused(verifier, hand_made({"alg": alg, "typ": "JWT"}, claims(), None))
    assert "algorithm" in message
    # The same, with a signature made up anyway.
    await refused(verifier, hand_made({"alg": alg}, claims(), SECRET.encode()))


async def test_an_algorithm_outside_the_allow_list_is_refused() -> None:
    long_secret = SECRET * 2
    verifier = SessionVerifier(settings(secret=long_secret, algorithms=("HS256",)), None)
    await refused(verifier, jwt.encode(claims(), long_secret, algorithm="HS512"))
    allowed = SessionVerifier(settings(secret=long_secret, algorithms=("HS512",)), None)
    assert (await allowed.verify(jwt.encode(claims(), long_secret, "HS512"))).subject


@pytest.mark.parametrize(
    "garbage",
    [
        "a.b.c",
        "eyJ.eyJ.sig",
        "not-base64!.eyJ.sig",
        b64(b"[1, 2]") + "." + b64(b"{}") + ".c2ln",  # a header that is not an object
        b64(b'{"alg": "HS256"') + "." + b64(b"{}") + ".c2ln",  # truncated JSON
        b64(b'{"alg": ["HS256"]}') + "." + b64(b"{}") + ".c2ln",
        b64(b'{"alg": "HS256"}') + "." + b64(b"not json") + ".c2ln",
        b64(b'{"alg": "HS256"}') + "." + b64(b'"a string"') + ".c2ln",
        b64(b'{"alg": "HS256"}') + "." + b64(b"{}") + "." + "A" * 20_000,
        "é.é.é",
        "a.b.c\x00",
        "..",
        "a..c",
        ".b.c",
        "a.b.c.d.e",
    ],
)
async def test_garbage_is_refused_never_an_error(garbage: str) -> None:
    verifier = SessionVerifier(settings(secret=SECRET), None)
    await refused(verifier, garbage)


def test_the_shape_of_a_jwt() -> None:
    assert looks_like_jwt(hs256())
    assert looks_like_jwt("abc.def.")  # unsigned: still a JWT, refused for its algorithm
    for not_jwt in ("il_live_abc", "a.b", "a.b.c.d", "a b.c.d", "é.b.c", "a.b.c="):
        assert not looks_like_jwt(not_jwt), not_jwt


# --- RS256 / ES256 against a JWKS ----------------------------------------------------------


def rsa_settings(url: str, **extra: Any) -> JwtSettings:
    return settings(jwks_url=url, algorithms=("RS256", "ES256"), **extra)


async def test_rs256_and_es256_tokens_verify_against_the_jwks(
    keys: Keys, jwks_server: JwksServer, http: aiohttp.ClientSession
) -> None:
    jwks_server.keys = [keys.rsa_jwk("rsa-1"), keys.ec_jwk("ec-1")]
    verifier = SessionVerifier(rsa_settings(jwks_server.url), JwksClient(jwks_server.url, http))
    rs = jwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
    es = jwt.encode(claims(sub="ec-user"), keys.ec, algorithm="ES256", headers={"kid": "ec-1"})
    assert (await verifier.verify(rs)).subject == "user-123"
    assert (await verifier.verify(es)).subject == "ec-user"
    assert (await verifier.verify(rs)).subject == "user-123"
    assert jwks_server.requests == 1, "the key set is cached"


async def test_a_token_signed_by_another_key_is_refused(
    keys: Keys, jwks_server: JwksServer, http: aiohttp.ClientSession
) -> None:
    jwks_server.keys = [keys.rsa_jwk("rsa-1")]
    verifier = SessionVerifier(rsa_settings(jwks_server.url), JwksClient(jwks_server.url, http))
    forged = jwt.encode(claims(), keys.other_rsa, algorithm="RS256", headers={"kid": "rsa-1"})
    await refused(verifier, forged)


async def test_hs256_signed_with_the_public_key_is_refused(
    keys: Keys, jwks_server: JwksServer, http: aiohttp.ClientSession
) -> None:
    """The algorithm confusion attack: the public key (which anyone has) used as an HMAC
    secret, on a verifier that would look the key up by the token's kid."""
    jwks_server.keys = [keys.rsa_jwk("rsa-1")]
    confused = hand_made({"alg": "HS256", "kid": "rsa-1"}, claims(), keys.rsa_public_pem)
    jwk_bytes = json.dumps(keys.rsa_jwk("rsa-1")).encode()
    confused_jwk = hand_made({"alg": "HS256", "kid": "rsa-1"}, claims(), jwk_bytes)
    # Asymmetric only: HS256 is not even allowed.
    only_rsa = SessionVerifier(rsa_settings(jwks_server.url), JwksClient(jwks_server.url, http))
    await refused(only_rsa, confused)
    await refused(only_rsa, confused_jwk)
    # Both allowed: an HS256 token is checked with the shared secret, never a JWKS key.
    both = SessionVerifier(
        settings(secret=SECRET, jwks_url=jwks_server.url, algorithms=("HS256", "RS256")),
        JwksClient(jwks_server.url, http),
    )
    await refused(both, confused)
    await refused(both, confused_jwk)
    assert (await both.verify(hs256())).subject == "user-123"


async def test_a_key_is_used_only_for_its_own_algorithm(
    keys: Keys, jwks_server: JwksServer, http: aiohttp.ClientSession
) -> None:
    jwks_server.keys = [keys.rsa_jwk("rsa-1", alg="RS256"), keys.ec_jwk("ec-1")]
    verifier = SessionVerifier(
        settings(jwks_url=jwks_server.url, algorithms=("RS256", "RS384", "ES256", "ES384")),
        JwksClient(jwks_server.url, http),
    )
    rs384 = jwt.encode(claims(), keys.rsa, algorithm="RS384", headers={"kid": "rsa-1"})
    await refused(verifier, rs384)  # the key says RS256
    es384_on_p256 = hand_made({"alg": "ES384", "kid": "ec-1"}, claims(), b"x")
    await refused(verifier, es384_on_p256)
    rs_on_ec = jwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "ec-1"})
    await refused(verifier, rs_on_ec)


async def test_key_pointers_in_the_header_are_ignored(
    keys: Keys, jwks_server: JwksServer, http: aiohttp.ClientSession
) -> None:
    jwks_server.keys = [keys.rsa_jwk("rsa-1")]
    verifier = SessionVerifier(rsa_settings(jwks_server.url), JwksClient(jwks_server.url, http))
    attacker_jwk = keys.rsa_jwk("rsa-1", key=keys.other_rsa)
    token = jwt.encode(
        claims(),
        keys.other_rsa,
        algorithm="RS256",
        headers={"kid": "rsa-1", "jwk": attacker_jwk, "jku": "http://127.0.0.1:1/evil.json"},
    )
    await refused(verifier, token)


async def test_an_unknown_kid_refetches_the_key_set_at_most_once_per_interval(
    keys: Keys, jwks_server: JwksServer, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    jwks_server.keys = [keys.rsa_jwk("old")]
    client = JwksClient(jwks_server.url, http, min_refresh_interval=30, clock=clock)
    verifier = SessionVerifier(rsa_settings(jwks_server.url), client)
    old = jwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "old"})
    assert (await verifier.verify(old)).subject == "user-123"
    assert jwks_server.requests == 1

    # The provider rotates in a new key; a token with it arrives a minute later.
    jwks_server.keys = [keys.rsa_jwk("old"), keys.rsa_jwk("new", key=keys.other_rsa)]
    clock.now += 60
    new = jwt.encode(claims(), keys.other_rsa, algorithm="RS256", headers={"kid": "new"})
    assert (await verifier.verify(new)).subject == "user-123"
    assert jwks_server.requests == 2

    # Made-up key ids do not make the gateway hammer the provider.
    for n in range(20):
        bogus = jwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": f"bogus-{n}"})
        await refused(verifier, bogus)
    assert jwks_server.requests == 2
    clock.now += 31
    await refused(verifier, bogus)
    assert jwks_server.requests == 3


async def test_a_token_without_kid_needs_exactly_one_fitting_key(
    keys: Keys, jwks_server: JwksServer, http: aiohttp.ClientSession
) -> None:
    jwks_server.keys = [keys.rsa_jwk("rsa-1"), keys.ec_jwk("ec-1")]
    verifier = SessionVerifier(rsa_settings(jwks_server.url), JwksClient(jwks_server.url, http))
    assert (await verifier.verify(jwt.encode(claims(), keys.rsa, "RS256"))).subject
    jwks_server.keys.append(keys.rsa_jwk("rsa-2", key=keys.other_rsa))
    fresh = SessionVerifier(rsa_settings(jwks_server.url), JwksClient(jwks_server.url, http))
    await refused(fresh, jwt.encode(claims(), keys.rsa, "RS256"))


async def test_the_keys_held_keep_working_while_the_provider_is_down(
    keys: Keys, jwks_server: JwksServer, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    jwks_server.keys = [keys.rsa_jwk("rsa-1")]
    client = JwksClient(jwks_server.url, http, ttl=300, clock=clock)
    verifier = SessionVerifier(rsa_settings(jwks_server.url), client)
    token = jwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
    assert (await verifier.verify(token)).subject
    jwks_server.status = 503
    clock.now += 600  # past the TTL: a refresh is tried, fails, and the old keys serve
    assert (await verifier.verify(token)).subject
    assert jwks_server.requests == 2
    assert (await verifier.verify(token)).subject
    assert jwks_server.requests == 2, "a failed refresh is not retried at once"


@pytest.mark.parametrize("status", [404, 500])
async def test_without_any_key_set_sessions_are_unavailable_not_refused(
    keys: Keys, jwks_server: JwksServer, http: aiohttp.ClientSession, status: int
) -> None:
    jwks_server.status = status
    clock = FakeClock()
    client = JwksClient(jwks_server.url, http, clock=clock)
    verifier = SessionVerifier(rsa_settings(jwks_server.url), client)
    token = jwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
    for _ in range(5):
        with pytest.raises(ServiceUnavailable) as caught:
            await verifier.verify(token)
        assert caught.value.status == 503
    assert jwks_server.requests == 1, "the provider is not asked on every request"


async def test_an_unreachable_or_malformed_key_set(
    keys: Keys, http: aiohttp.ClientSession, jwks_server: JwksServer
) -> None:
    token = jwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
    unreachable = "http://127.0.0.1:9/jwks.json"
    verifier = SessionVerifier(rsa_settings(unreachable), JwksClient(unreachable, http))
    with pytest.raises(ServiceUnavailable):
        await verifier.verify(token)
    jwks_server.keys = ["not a key", {"kty": "RSA", "kid": "rsa-1", "n": "!!", "e": "AQAB"}]
    verifier = SessionVerifier(rsa_settings(jwks_server.url), JwksClient(jwks_server.url, http))
    await refused(verifier, token)


async def test_a_short_rsa_key_is_refused(
    jwks_server: JwksServer, http: aiohttp.ClientSession
) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    jwks_server.keys = [{**RSAAlgorithm.to_jwk(small.public_key(), as_dict=True), "kid": "small"}]
    verifier = SessionVerifier(rsa_settings(jwks_server.url), JwksClient(jwks_server.url, http))
    with warnings.catch_warnings():  # PyJWT warns when signing with it; the gateway refuses
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        token = jwt.encode(claims(), small, "RS256", headers={"kid": "small"})
    await refused(verifier, token)


# --- settings -------------------------------------------------------------------------------


BASE_ENV = {"INTERLOCK_DATA_DIR": "/tmp/interlock-test-data"}


def jwt_problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings({**BASE_ENV, **env})
    return caught.value.problems


def test_sessions_are_off_without_a_key_source() -> None:
    assert load_settings(BASE_ENV).jwt is None


def test_nextauth_secret_is_accepted_and_never_shown() -> None:
    jwt_settings = load_settings({**BASE_ENV, "NEXTAUTH_SECRET": SECRET}).jwt
    assert jwt_settings is not None
    assert jwt_settings.secret == SECRET and jwt_settings.algorithms == ("HS256",)
    assert SECRET not in repr(jwt_settings)
    explicit = load_settings(
        {**BASE_ENV, "NEXTAUTH_SECRET": "n" * 40, "INTERLOCK_JWT_SECRET": SECRET}
    ).jwt
    assert explicit is not None and explicit.secret == SECRET


def test_the_default_algorithms_follow_the_key_sources() -> None:
    both = load_settings(
        {
            **BASE_ENV,
            "INTERLOCK_JWT_SECRET": SECRET,
            "INTERLOCK_JWKS_URL": "https://id.example.com/jwks.json",
            "INTERLOCK_JWT_AUDIENCE": "web, api",
            "INTERLOCK_JWT_ISSUER": ISSUER,
            "INTERLOCK_JWT_CREATE_USERS": "true",
        }
    ).jwt
    assert both is not None
    assert both.algorithms == ("HS256", "RS256", "ES256")
    assert both.audience == ("web", "api") and both.issuer == ISSUER and both.create_users


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"INTERLOCK_JWT_SECRET": "short"}, "INTERLOCK_JWT_SECRET: must be at least 32"),
        ({"NEXTAUTH_SECRET": "short"}, "NEXTAUTH_SECRET: must be at least 32"),
        (
            {"INTERLOCK_JWKS_URL": "http://id.example.com/jwks"},
            "INTERLOCK_JWKS_URL: must be https://",
        ),
        ({"INTERLOCK_JWKS_URL": "ftp://x/jwks"}, "INTERLOCK_JWKS_URL: expected an https://"),
        (
            {"INTERLOCK_JWT_SECRET": SECRET, "INTERLOCK_JWT_ALGORITHMS": "none"},
            "INTERLOCK_JWT_ALGORITHMS: 'none' is not an allowed algorithm",
        ),
        (
            {"INTERLOCK_JWT_SECRET": SECRET, "INTERLOCK_JWT_ALGORITHMS": "HS256,RS256"},
            "INTERLOCK_JWT_ALGORITHMS: RS256 needs INTERLOCK_JWKS_URL",
        ),
        (
            {"INTERLOCK_JWKS_URL": "https://x/jwks", "INTERLOCK_JWT_ALGORITHMS": "HS256"},
            "INTERLOCK_JWT_ALGORITHMS: HS256 needs INTERLOCK_JWT_SECRET",
        ),
        (
            {"INTERLOCK_JWT_SECRET": SECRET, "INTERLOCK_JWT_ALGORITHMS": "HS512"},
            "INTERLOCK_JWT_ALGORITHMS: HS512 needs a secret of at least 64 bytes",
        ),
        ({"INTERLOCK_JWT_AUDIENCE": "web"}, "INTERLOCK_JWT_SECRET or INTERLOCK_JWKS_URL"),
        ({"INTERLOCK_JWT_CREATE_USERS": "perhaps"}, "INTERLOCK_JWT_CREATE_USERS: expected"),
    ],
)
def test_bad_session_settings_are_one_line_each(env: dict[str, str], expected: str) -> None:
    found = jwt_problems(env)
    assert any(line.startswith(expected) for line in found), found
    for value in env.values():
        if len(value) >= 32:
            assert all(value not in line for line in found)


def test_loopback_jwks_may_be_plain_http() -> None:
    jwt_settings = load_settings(
        {**BASE_ENV, "INTERLOCK_JWKS_URL": "http://127.0.0.1:8000/jwks.json"}
    ).jwt
    assert jwt_settings is not None and jwt_settings.algorithms == ("RS256", "ES256")


# --- sessions in the authenticator ---------------------------------------------------------


class FakeUsers:
    """Users by subject, in memory, counting look-ups."""

    def __init__(self) -> None:
        self.users: dict[str, UserRecord] = {}
        self.lookups = 0

    async def find_by_external_id(self, external_id: str) -> UserRecord | None:
        self.lookups += 1
        return self.users.get(external_id)

    async def get_or_create_external(self, external_id: str, *, name: str, tier: str) -> UserRecord:
        self.lookups += 1
        if external_id not in self.users:
            self.users[external_id] = UserRecord(
                id=f"id-{len(self.users)}",
                name=name,
                email=None,
                role="member",
                tier=tier,
                status="active",
                external_id=external_id,
                created_at=datetime.now(UTC),
            )
        return self.users[external_id]


class NoKeys:
    async def find_by_key(self, key: str) -> None:
        return None


def session_authenticator(
    users: FakeUsers, *, create_users: bool, clock: FakeClock | None = None
) -> Authenticator:
    tiers = Tiers({"free": TierConfig(models=["local"], rpm=5)}, ["local"], "free")
    return Authenticator(
        NoKeys(),
        b"0123456789abcdef0123456789abcdef",
        tiers=tiers,
        sessions=SessionVerifier(settings(secret=SECRET), None),
        users=users,
        create_users=create_users,
        clock=clock or FakeClock(),
    )


async def test_an_unknown_subject_is_refused_unless_users_are_created() -> None:
    users = FakeUsers()
    closed = session_authenticator(users, create_users=False)
    with pytest.raises(AuthenticationFailed):
        await closed.authenticate(hs256(sub="newcomer"))
    assert users.users == {}
    opened = session_authenticator(users, create_users=True)
    principal = await opened.authenticate(hs256(sub="newcomer"))
    assert (principal.via, principal.key_id, principal.tier) == ("session", None, "free")
    assert principal.scope == Scope(models=frozenset({"local"}), rpm=5)
    assert users.users["newcomer"].name == "Ada Lovelace"


async def test_a_session_user_is_cached_and_a_disabled_one_refused() -> None:
    users = FakeUsers()
    clock = FakeClock()
    authenticator = session_authenticator(users, create_users=True, clock=clock)
    token = hs256(sub="regular")
    first = await authenticator.authenticate(token)
    assert await authenticator.authenticate(token) is first
    assert users.lookups == 1
    user = users.users["regular"]
    users.users["regular"] = dataclasses.replace(user, status="disabled")
    authenticator.forget()
    with pytest.raises(AuthenticationFailed):
        await authenticator.authenticate(token)


async def test_forged_sessions_never_reach_the_user_lookup() -> None:
    users = FakeUsers()
    authenticator = session_authenticator(users, create_users=True)
    for token in (hs256(exp=int(time.time()) - 3600), hand_made({"alg": "none"}, claims(), None)):
        with pytest.raises(AuthenticationFailed):
            await authenticator.authenticate(token)
    assert users.lookups == 0


async def test_without_sessions_a_jwt_shaped_credential_is_an_api_key() -> None:
    keys = NoKeys()
    authenticator = Authenticator(keys, b"0123456789abcdef0123456789abcdef")
    with pytest.raises(AuthenticationFailed) as caught:
        await authenticator.authenticate(hs256())
    assert caught.value.message == "Missing or invalid API key."
