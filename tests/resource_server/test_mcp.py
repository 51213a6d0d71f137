"""
End to end with the official MCP Python SDK: an MCP server whose token verifier is the kit,
and an MCP client that gets a client-credentials token from AgentIdP for that server.

Both are the runnable examples in docs/examples, loaded from there: what a reader copies is
what runs here. AgentIdP is the real one (pytest-django's live server); the SDK finds it by
its own discovery, from the MCP server's 401 to AgentIdP's RFC 8414 metadata.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest
import uvicorn
from joserfc import jwt
from mcp.client.auth.exceptions import OAuthTokenError
from rest_framework.test import APIClient

from oauth.keys import get_signing_key
from oauth.tokens import TOKEN_TYPE
from tests.conftest import basic_auth
from tests.factories import AgentFactory, make_credential
from tests.oauth.jwtclients import key_credential, new_key, public_jwks

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


server_example = load_example("mcp_server")
client_example = load_example("mcp_client")


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def serving(build) -> Iterator[str]:
    """Run the MCP server that `build(url)` makes under uvicorn in a thread; yield its MCP URL."""
    sock = free_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    app = build(url).streamable_http_app()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def agentidp(live_server, settings) -> str:
    """AgentIdP's issuer: the live server's URL, as its metadata and tokens name it."""
    settings.AGENTIDP_ISSUER = live_server.url
    return live_server.url


@pytest.fixture
def tools_server(agentidp) -> Iterator[str]:
    with serving(lambda url: server_example.build(issuer=agentidp, url=url, allow_http=True)) as url:
        yield url


@pytest.fixture
def other_server(agentidp) -> Iterator[str]:
    with serving(lambda url: server_example.build(issuer=agentidp, url=url, allow_http=True)) as url:
        yield url


def call(server: str, auth, tool: str = "whoami", arguments: dict | None = None):
    return asyncio.run(client_example.call_tool(server, auth, tool, arguments))


def mcp_status(server: str, token: str) -> int:
    """The status of an MCP initialize request bearing `token` (401: the token was refused)."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    headers = {"Authorization": "Bearer " + token, "Accept": "application/json, text/event-stream"}
    return httpx2.post(server, json=body, headers=headers, timeout=10).status_code


def agent_for(*resources: str, scopes=("tools:call",)):
    return AgentFactory(scopes=list(scopes), allowed_resources=list(resources))


def test_an_mcp_client_with_a_secret_calls_a_tool_verified_by_the_kit(tools_server, agentidp):
    agent = agent_for(tools_server)
    issued = make_credential(agent)
    auth = client_example.auth_provider(
        server=tools_server, issuer=agentidp, client_id=issued.credential.client_id, client_secret=issued.client_secret
    )

    result = call(tools_server, auth)

    assert result == {"agent": str(agent.id), "client_id": issued.credential.client_id, "scopes": ["tools:call"]}
    assert call(tools_server, auth, "add", {"a": 2, "b": 3}) == 5


def test_an_mcp_client_with_a_signed_jwt_calls_a_tool(tools_server, agentidp):
    agent = agent_for(tools_server)
    key = new_key("ES256")
    credential = key_credential(agent, jwks=public_jwks(key))
    auth = client_example.auth_provider(
        server=tools_server,
        issuer=agentidp,
        client_id=credential.client_id,
        private_key_pem=key.as_pem(private=True).decode(),
        algorithm="ES256",
    )

    assert call(tools_server, auth)["client_id"] == credential.client_id


def test_the_token_the_sdk_got_is_refused_by_another_server_and_by_agentidps_own_api(
    tools_server, other_server, agentidp
):
    agent = agent_for(tools_server, other_server, scopes=("tools:call", "agentidp:admin"))
    issued = make_credential(agent)
    storage = client_example.MemoryTokenStorage()
    auth = client_example.auth_provider(
        server=tools_server,
        issuer=agentidp,
        client_id=issued.credential.client_id,
        client_secret=issued.client_secret,
        storage=storage,
    )
    call(tools_server, auth)
    token = storage.tokens.access_token
    management = APIClient()
    management.credentials(HTTP_AUTHORIZATION="Bearer " + token)

    assert mcp_status(tools_server, token) != 401
    assert mcp_status(other_server, token) == 401
    assert management.get("/api/v1/agents").status_code == 401


def test_a_client_whose_agent_may_not_have_the_resource_gets_no_token(tools_server, agentidp):
    issued = make_credential(agent_for("https://elsewhere.example/mcp"))
    auth = client_example.auth_provider(
        server=tools_server, issuer=agentidp, client_id=issued.credential.client_id, client_secret=issued.client_secret
    )

    with pytest.raises(BaseException) as raised:  # the SDK raises it from inside anyio task groups
        call(tools_server, auth)

    [error] = token_errors(raised.value)
    assert "invalid_target" in str(error)


def token_errors(exc: BaseException) -> list[OAuthTokenError]:
    if isinstance(exc, OAuthTokenError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        return [found for inner in exc.exceptions for found in token_errors(inner)]
    return token_errors(exc.__cause__) if exc.__cause__ else []


def agentidp_token(agentidp: str, issued, resource: str) -> str:
    response = httpx2.post(
        agentidp + "/api/v1/token",
        data={"grant_type": "client_credentials", "resource": resource},
        headers={"Authorization": basic_auth(issued.credential.client_id, issued.client_secret)},
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def test_an_expired_token_and_agentidps_own_token_are_refused(tools_server, agentidp):
    agent = agent_for(tools_server)
    issued = make_credential(agent)
    key = get_signing_key()
    now = int(time.time())
    expired = jwt.encode(
        {"alg": key.algorithm, "typ": TOKEN_TYPE, "kid": key.kid},
        {
            "iss": agentidp,
            "sub": str(agent.id),
            "aud": tools_server,
            "exp": now - 120,
            "iat": now - 3720,
            "jti": uuid.uuid4().hex,
            "client_id": issued.credential.client_id,
            "scope": "tools:call",
        },
        key.key,
        algorithms=[key.algorithm],
    )
    own = httpx2.post(
        agentidp + "/api/v1/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic_auth(issued.credential.client_id, issued.client_secret)},
    ).json()["access_token"]

    assert mcp_status(tools_server, agentidp_token(agentidp, issued, tools_server)) != 401
    assert mcp_status(tools_server, expired) == 401
    assert mcp_status(tools_server, own) == 401


def test_with_introspection_a_revoked_token_is_refused_at_once(agentidp):
    checker = make_credential(AgentFactory(name="tools-server"))
    build = lambda url: server_example.build(  # noqa: E731
        issuer=agentidp,
        url=url,
        introspect_client_id=checker.credential.client_id,
        introspect_client_secret=checker.client_secret,
        allow_http=True,
    )
    with (
        serving(build) as introspecting,
        serving(lambda url: server_example.build(issuer=agentidp, url=url, allow_http=True)) as local,
    ):
        issued = make_credential(agent_for(introspecting, local))
        for_introspecting = agentidp_token(agentidp, issued, introspecting)
        for_local = agentidp_token(agentidp, issued, local)
        assert mcp_status(introspecting, for_introspecting) != 401

        for token in (for_introspecting, for_local):
            revoked = httpx2.post(
                agentidp + "/api/v1/token/revoke",
                data={"token": token},
                headers={"Authorization": basic_auth(issued.credential.client_id, issued.client_secret)},
            )
            assert revoked.status_code == 200

        assert mcp_status(introspecting, for_introspecting) == 401
        # Verified locally, a revoked token lives until it expires: why introspection exists.
        assert mcp_status(local, for_local) != 401


def test_the_examples_run_as_a_reader_runs_them(agentidp):
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}/mcp"
    issued = make_credential(agent_for(url))
    env = {**os.environ, "AGENTIDP_CLIENT_SECRET": issued.client_secret}
    server = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLES / "mcp_server.py"),
            "--issuer",
            agentidp,
            "--url",
            url,
            "--port",
            str(port),
            "--allow-http",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert server.poll() is None, server.communicate()
                time.sleep(0.1)
        client = subprocess.run(
            [
                sys.executable,
                str(EXAMPLES / "mcp_client.py"),
                "--server",
                url,
                "--issuer",
                agentidp,
                "--client-id",
                issued.credential.client_id,
                "add",
                '{"a": 40, "b": 2}',
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.terminate()
        server.wait(10)

    assert client.returncode == 0, client.stderr
    assert client.stdout.strip() == "42"
    assert issued.client_secret not in client.stdout + client.stderr
