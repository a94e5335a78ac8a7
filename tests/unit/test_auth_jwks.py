"""RS256/ES256 tokens verified with keys from a JWKS file or URL, and every way a token must fail.

Keys are generated here; the URL case serves the JWKS from a local http.server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.common.auth import AuthError, TokenVerifier, bearer_metadata, mint_token
from services.common.config import AuthSettings, SettingsError

SECRET = "s" * 40
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(private: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
    jwk = algorithm.to_jwk(private.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def _jwks(*keys: dict[str, Any]) -> dict[str, Any]:
    return {"keys": list(keys)}


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": "alice", "aud": "media", "iat": now, "nbf": now}
    claims["exp"] = now + 600
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _rs(kid: str = "rsa-1", key: Any = RSA_KEY, **claims: Any) -> str:
    return jwt.encode(_claims(**claims), key, algorithm="RS256", headers={"kid": kid})


def _es(kid: str = "ec-1", **claims: Any) -> str:
    return jwt.encode(_claims(**claims), EC_KEY, algorithm="ES256", headers={"kid": kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256_with_raw_key(key: bytes, kid: str = "rsa-1") -> str:
    """An HS256 token whose HMAC key is the RSA public key's PEM: the algorithm-confusion attack
    (PyJWT refuses to produce one, so it is assembled by hand)."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = _b64(json.dumps(_claims()).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def _tamper(token: str) -> str:
    """Same header and signature, a payload naming another subject."""
    header, _, signature = token.split(".")
    payload = _b64(json.dumps(_claims(sub="mallory")).encode())
    return f"{header}.{payload}.{signature}"


@pytest.fixture(scope="module")
def jwks_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(
        json.dumps(_jwks(_jwk(RSA_KEY, "rsa-1", "RS256"), _jwk(EC_KEY, "ec-1", "ES256")))
    )
    return path


def _settings(**kw: Any) -> AuthSettings:
    base: dict[str, Any] = {"jwt_secret": "", "audience": "media", "issuer": ""}
    base.update(kw)
    return AuthSettings(**base)


def _refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(AuthError) as caught:
        verifier.verify(token)
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    return caught.value.message


def test_rs256_and_es256_tokens_verify_with_keys_from_a_jwks_file(jwks_file: Path) -> None:
    verifier = TokenVerifier(_settings(jwks_file=str(jwks_file)))
    assert verifier.verify(_rs()).subject == "alice"
    assert verifier.verify(_es(sub="bob")).subject == "bob"
    worker = verifier.verify(_rs(roles=["worker"], sub="w1"))
    assert worker.is_worker
    # Without a secret configured, HS256 tokens are refused.
    assert "not accepted" in _refused(verifier, mint_token(SECRET, "alice"))


def test_hs256_and_jwks_work_side_by_side(jwks_file: Path) -> None:
    verifier = TokenVerifier(_settings(jwt_secret=SECRET, jwks_file=str(jwks_file)))
    assert verifier.verify(mint_token(SECRET, "carol")).subject == "carol"
    assert verifier.verify(_rs(sub="dave")).subject == "dave"


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: _rs(exp=int(time.time()) - 60), id="expired"),
        pytest.param(lambda: _es(exp=int(time.time()) - 60), id="expired-es256"),
        pytest.param(lambda: _rs(nbf=int(time.time()) + 300), id="not-yet-valid"),
        pytest.param(lambda: _rs(aud="someone-else"), id="wrong-audience"),
        pytest.param(lambda: _rs(aud=None), id="no-audience"),
        pytest.param(lambda: _rs(exp=None), id="no-expiry"),
        pytest.param(lambda: _rs(sub=None), id="no-subject"),
        pytest.param(lambda: _rs(sub="a\x00b"), id="control-character-subject"),
        pytest.param(lambda: _rs(roles="worker"), id="roles-not-a-list"),
        pytest.param(lambda: jwt.encode(_claims(), None, algorithm="none"), id="alg-none"),
        pytest.param(
            lambda: jwt.encode(_claims(), None, algorithm="none", headers={"kid": "rsa-1"}),
            id="alg-none-with-kid",
        ),
        pytest.param(
            lambda: _hs256_with_raw_key(
                RSA_KEY.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            ),
            id="hs256-signed-with-the-rsa-public-key",
        ),
        pytest.param(lambda: _tamper(_rs()), id="tampered-rs256"),
        pytest.param(lambda: _tamper(_es()), id="tampered-es256"),
        pytest.param(lambda: _tamper(mint_token(SECRET, "alice")), id="tampered-hs256"),
        pytest.param(lambda: _rs(key=OTHER_RSA_KEY), id="signed-by-another-key-same-kid"),
        pytest.param(lambda: _rs(kid="nobody"), id="unknown-kid"),
        pytest.param(
            lambda: jwt.encode(_claims(), RSA_KEY, algorithm="RS256", headers={"kid": "ec-1"}),
            id="kid-of-a-key-of-another-type",
        ),
        pytest.param(
            lambda: jwt.encode(_claims(), RSA_KEY, algorithm="RS512", headers={"kid": "rsa-1"}),
            id="algorithm-not-accepted",
        ),
        pytest.param(lambda: "a.b.c", id="garbage"),
    ],
)
def test_bad_tokens_are_unauthenticated(jwks_file: Path, make: Any) -> None:
    # The secret is configured too, so HS256 is on: confusion must still fail.
    verifier = TokenVerifier(_settings(jwt_secret=SECRET, jwks_file=str(jwks_file)))
    _refused(verifier, make())


def test_issuer_is_required_when_configured(jwks_file: Path) -> None:
    verifier = TokenVerifier(_settings(issuer="https://idp.example", jwks_file=str(jwks_file)))
    assert verifier.verify(_rs(iss="https://idp.example")).subject == "alice"
    _refused(verifier, _rs(iss="https://evil.example"))
    _refused(verifier, _rs())  # no iss at all


def test_a_token_without_kid_uses_the_only_key_of_its_type(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text(json.dumps(_jwks(_jwk(RSA_KEY, "rsa-1", "RS256"))))
    verifier = TokenVerifier(_settings(jwks_file=str(path)))
    assert verifier.verify(jwt.encode(_claims(), RSA_KEY, algorithm="RS256")).subject == "alice"


def test_a_bad_jwks_file_stops_start_up(tmp_path: Path) -> None:
    for content in ["not json", '{"keys": []}', '{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}']:
        path = tmp_path / "bad.json"
        path.write_text(content)
        with pytest.raises(SettingsError):
            TokenVerifier(_settings(jwks_file=str(path)))
    with pytest.raises(SettingsError):
        TokenVerifier(_settings(jwks_file=str(tmp_path / "missing.json")))


def test_settings_need_a_secret_or_a_jwks(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AUTH_JWT_SECRET", "AUTH_JWKS_FILE", "AUTH_JWKS_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SettingsError):
        AuthSettings.from_env()
    monkeypatch.setenv("AUTH_JWKS_URL", "https://idp.example/jwks.json")
    assert AuthSettings.from_env().jwt_secret == ""
    monkeypatch.setenv("AUTH_JWT_SECRET", "short")
    with pytest.raises(SettingsError):
        AuthSettings.from_env()
    monkeypatch.setenv("AUTH_JWT_SECRET", SECRET)
    monkeypatch.setenv("AUTH_JWKS_FILE", "/some/file.json")
    with pytest.raises(SettingsError):
        AuthSettings.from_env()  # both a file and a URL
    monkeypatch.delenv("AUTH_JWKS_FILE")
    monkeypatch.delenv("AUTH_JWKS_URL")
    assert AuthSettings.from_env().jwt_secret == SECRET  # HS256 alone, as in local runs


def test_verified_tokens_are_cached_until_they_expire_and_failures_are_not(
    jwks_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = TokenVerifier(_settings(jwks_file=str(jwks_file)))
    checks: list[str] = []
    real = verifier._verify

    def counting(token: str) -> Any:
        checks.append(token)
        return real(token)

    monkeypatch.setattr(verifier, "_verify", counting)
    good = _rs()
    for _ in range(3):
        verifier.verify(good)
    assert len(checks) == 1
    # Within the leeway an expired token still verifies, but its cache entry is already past
    # its expiry, so every call checks it again.
    nearly = _rs(exp=int(time.time()) - 2)
    verifier.verify(nearly)
    verifier.verify(nearly)
    assert len(checks) == 3
    bad = _rs(kid="nobody")
    for _ in range(2):
        _refused(verifier, bad)
    assert len(checks) == 5


class _JwksServer:
    """Serves a JWKS that the test can change, and counts fetches."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = _jwks(_jwk(RSA_KEY, "rsa-1", "RS256"))
        self.fetches = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                body = json.dumps(owner.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks_server() -> Iterator[_JwksServer]:
    server = _JwksServer()
    try:
        yield server
    finally:
        server.close()


async def test_jwks_url_is_fetched_once_and_again_for_a_new_kid(jwks_server: _JwksServer) -> None:
    verifier = TokenVerifier(_settings(jwks_url=jwks_server.url, jwks_min_refresh_seconds=0))
    assert jwks_server.fetches == 0  # nothing is fetched before a token needs it
    who = await verifier.identify(bearer_metadata(_rs()))
    assert who.subject == "alice" and jwks_server.fetches == 1
    await verifier.verify_async(_rs(sub="bob"))  # a known kid: no fetch
    assert jwks_server.fetches == 1
    # The provider rotates: a token signed with a new key makes the verifier fetch again.
    jwks_server.document = _jwks(_jwk(RSA_KEY, "rsa-1", "RS256"), _jwk(EC_KEY, "ec-2", "ES256"))
    assert (await verifier.verify_async(_es(kid="ec-2"))).subject == "alice"
    assert jwks_server.fetches == 2


async def test_unknown_kids_cannot_make_the_verifier_fetch_on_every_call(
    jwks_server: _JwksServer,
) -> None:
    verifier = TokenVerifier(_settings(jwks_url=jwks_server.url, jwks_min_refresh_seconds=60))
    await verifier.verify_async(_rs())
    for n in range(5):
        with pytest.raises(AuthError) as caught:
            await verifier.verify_async(_rs(kid=f"made-up-{n}"))
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert jwks_server.fetches == 1


async def test_an_unreachable_jwks_url_is_unauthenticated_and_keeps_old_keys(
    jwks_server: _JwksServer,
) -> None:
    verifier = TokenVerifier(_settings(jwks_url=jwks_server.url, jwks_min_refresh_seconds=0))
    await verifier.verify_async(_rs())
    jwks_server.close()
    # A key held before the outage still verifies new tokens; an unknown one is refused.
    assert (await verifier.verify_async(_rs(sub="erin"))).subject == "erin"
    with pytest.raises(AuthError) as caught:
        await verifier.verify_async(_es(kid="ec-9"))
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
