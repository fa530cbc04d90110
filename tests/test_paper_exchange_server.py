"""The HTTP front end answers every method and every malformed request with Alpaca-style JSON,
never with the standard library's HTML error pages."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

from tests.paper_exchange_helpers import AUTH, running_exchange


def test_head_options_and_unknown_methods_get_json_errors_and_the_allowed_methods() -> None:
    with running_exchange() as ex:
        for method in ("OPTIONS", "TRACE", "FOO", "PUT"):
            response = ex.http.request(method, ex.url + "/v2/orders", headers=AUTH, timeout=5)
            assert response.status_code == 405, method
            assert response.headers["Content-Type"].startswith("application/json")
            assert response.json() == {"code": 40510000, "message": "method not allowed"}
            assert response.headers["Allow"] == "DELETE, GET, POST"
        unknown_path = ex.http.request("FOO", ex.url + "/v2/nowhere", headers=AUTH, timeout=5)
        assert unknown_path.status_code == 404 and unknown_path.json()["code"] == 40410000
        # HEAD: the head of the JSON error, without the body HTTP forbids; the connection stays usable.
        head = ex.http.head(ex.url + "/v2/account", headers=AUTH, timeout=5)
        assert head.status_code == 405 and head.content == b""
        assert int(head.headers["Content-Length"]) == len(b'{"code":40510000,"message":"method not allowed"}')
        assert head.headers["Allow"] == "GET"
        assert ex.http.get(ex.url + "/v2/account", headers=AUTH, timeout=5).status_code == 200


def _raw(url: str, request: bytes) -> tuple[str, dict[str, str], bytes]:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    return status, dict(line.split(": ", 1) for line in lines), body


def test_a_malformed_request_line_is_answered_with_a_json_error() -> None:
    with running_exchange() as ex:
        status, headers, body = _raw(ex.url, b"GET /v2/account HTTP/9.9\r\nHost: x\r\n\r\n")
        assert status.startswith("HTTP/1.1 505")
        assert headers["Content-Type"].startswith("application/json")
        assert json.loads(body)["code"] == 50510000
        status, _headers, body = _raw(ex.url, b"GARBAGE\r\n\r\n")
        assert status.startswith("HTTP/1.1 400") and json.loads(body)["code"] == 40010000
