"""
What verifying an AgentIdP access token costs a resource server, per request, with the
resource-server kit (agentidp.resource_server) and its key cache warm.

    .venv/bin/python bench/resource_server.py [--seconds 2]

Serves a JWK Set from a local HTTP server (the kit's one fetch), signs RFC 9068 access tokens
as AgentIdP does (ES256, its default, and RS256 with a 3072-bit key), and measures for one
core, per algorithm:

- the kit's TokenVerifier.verify: key by kid from the cache, signature, claims, scopes;
- joserfc's jwt.decode of the same token with the key in hand, for comparison: the
  signature and a claims parse, nothing checked;
- a Django view behind require_access_token, and a DRF APIView with AccessTokenAuthentication
  and HasScopes, each driven by a test request factory (no network, no server): what the
  kit adds to a request in the frameworks.

Then the cold case: the first verification of a fresh verifier, which fetches the keys.
Introspection is not measured here: it is one HTTP round trip to AgentIdP per request.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

RESOURCE = "https://reports.example/api"


def rate(operation, seconds: float) -> tuple[float, float]:
    """Operations per second, and the median microseconds of one, over batches of 100."""
    batches, done, start = [], 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        batch_start = time.perf_counter()
        for _ in range(100):
            operation()
        batches.append((time.perf_counter() - batch_start) / 100)
        done += 100
    return done / elapsed, statistics.median(batches) * 1e6


def serve_jwks(keys: KeySet) -> tuple[ThreadingHTTPServer, str]:
    body = json.dumps({"keys": [key.as_dict(private=False) for key in keys.keys]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def configure_django(issuer: str, jwks_uri: str) -> None:
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "rest_framework"],
        REST_FRAMEWORK={"UNAUTHENTICATED_USER": None},
        AGENTIDP_RESOURCE_SERVER={
            "ISSUER": issuer,
            "RESOURCE": RESOURCE,
            "JWKS_URI": jwks_uri,
            "ALLOW_HTTP": True,
        },
    )
    import django

    django.setup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement (default 2)")
    seconds = parser.parse_args().seconds

    keys = KeySet(
        [
            ECKey.generate_key("P-256", parameters={"kid": "es256", "alg": "ES256", "use": "sig"}),
            RSAKey.generate_key(3072, parameters={"kid": "rs256", "alg": "RS256", "use": "sig"}),
        ]
    )
    server, issuer = serve_jwks(keys)
    jwks_uri = issuer + "/jwks"
    configure_django(issuer, jwks_uri)

    from django.http import JsonResponse
    from django.test import RequestFactory
    from rest_framework.response import Response
    from rest_framework.test import APIRequestFactory
    from rest_framework.views import APIView

    from agentidp.resource_server import Settings, TokenVerifier
    from agentidp.resource_server.django import require_access_token
    from agentidp.resource_server.drf import AccessTokenAuthentication, HasScopes

    @require_access_token("reports:read")
    def view(request):
        return JsonResponse({"agent": request.access_token.subject})

    class ReportView(APIView):
        authentication_classes = [AccessTokenAuthentication]
        permission_classes = [HasScopes]
        required_scopes = ["reports:read"]

        def get(self, request):
            return Response({"agent": request.auth.subject})

    drf_view = ReportView.as_view()
    settings = Settings(issuer=issuer, resource=RESOURCE, jwks_uri=jwks_uri, allow_http=True)
    verifier = TokenVerifier(settings)
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": str(uuid.uuid4()),
        "aud": RESOURCE,
        "exp": now + 3600,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "client_id": uuid.uuid4().hex,
        "scope": "reports:read reports:write",
    }
    print(f"{'per request':<44} {'ops/s':>9} {'median us':>10}")
    for key in keys.keys:
        alg = key.alg
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            token = jwt.encode({"alg": alg, "typ": "at+jwt", "kid": key.kid}, claims, key, algorithms=[alg])
        assert verifier.verify(token, scopes=["reports:read"]).subject == claims["sub"]
        request = RequestFactory().get("/reports", HTTP_AUTHORIZATION="Bearer " + token)
        drf_request = APIRequestFactory().get("/reports", HTTP_AUTHORIZATION="Bearer " + token)
        assert view(request).status_code == 200 and drf_view(drf_request).status_code == 200
        public = KeySet.import_key_set({"keys": [key.as_dict(private=False)]}).keys[0]
        cases = {
            f"{alg}: kit TokenVerifier.verify": lambda token=token: verifier.verify(token, scopes=["reports:read"]),
            f"{alg}: joserfc jwt.decode alone": lambda token=token, public=public, alg=alg: jwt.decode(
                token, public, algorithms=[alg]
            ),
            f"{alg}: Django view, require_access_token": lambda request=request: view(request),
            f"{alg}: DRF APIView, authentication + scopes": lambda drf_request=drf_request: drf_view(drf_request),
        }
        for label, operation in cases.items():
            ops, median_us = rate(operation, seconds)
            print(f"{label:<44} {ops:>9.0f} {median_us:>10.1f}")
    fetches = verifier.keys.fetches
    cold = []
    for _ in range(20):
        fresh = TokenVerifier(settings)
        started = time.perf_counter()
        fresh.verify(token)
        cold.append(time.perf_counter() - started)
    print(f"{'cold (first verify fetches the keys), median':<44} {'':>9} {statistics.median(cold) * 1e6:>10.1f}")
    print(f"key fetches by the warm verifier over every run above: {fetches}")
    server.shutdown()


if __name__ == "__main__":
    main()
