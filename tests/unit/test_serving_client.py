"""The endpoint client against a loopback HTTP server that answers like the ranking app."""

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from _loopback import serving

from freshrank.serving.client import RankingClient

SEEN: list[dict] = []


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        SEEN.append(body)
        if self.path == "/busy":
            self._answer(503, b'{"detail":"no model has been promoted yet"}', {})
        else:
            self._answer(200, b"{}", {"x-model-version": "7", "x-replica": "r1"})

    def do_GET(self):  # noqa: N802
        version = "null" if self.path != "/healthz" else "12"
        self._answer(200, b'{"model_version": %s}' % version.encode(), {})

    def _answer(self, status, body, headers):
        self.send_response(status)
        for k, v in {"content-type": "application/json", **headers}.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def url():
    with serving(_Handler) as base:
        yield base


def test_an_answer_names_status_version_and_replica(url):
    with RankingClient(url + "/") as client:
        ok = client.rank({"user_id": "u", "candidates": [{"item_id": "a"}]})
        busy = client.rank(b'{"user_id": "v"}', path="/busy")
        assert client.served_version() == 12
    assert (ok.ok, ok.status, ok.model_version, ok.replica, ok.error) == (True, 200, 7, "r1", None)
    assert (busy.ok, busy.status, busy.model_version) == (False, 503, None)
    assert "no model has been promoted" in busy.error
    assert SEEN[-2:] == [{"user_id": "u", "candidates": [{"item_id": "a"}]}, {"user_id": "v"}]


def test_no_server_is_status_zero_with_the_reason():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = server.server_address[1]
    server.server_close()  # nothing listens there now
    with RankingClient(f"http://127.0.0.1:{port}", timeout_s=2.0) as client:
        answer = client.rank({"user_id": "u"})
        assert client.served_version() is None
    assert answer.status == 0 and not answer.ok and "ConnectError" in answer.error
