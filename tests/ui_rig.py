"""A tunnel rig for the profile runner and the web app: real srvd and sshnpd (subprocesses on
the shared embedded atServer) and a real HTTP server for the tunnel to reach."""

from __future__ import annotations

import http.server
import socket
import threading
from pathlib import Path

from tests.fixtures_np import NpEnv
from tests.test_sshnp_rig import DAEMON_READY, RELAY_READY

PAGE = b"<html><body><h1>hello through the tunnel</h1></body></html>"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args: object) -> None:
        pass


class WebServer:
    """A real HTTP server on 127.0.0.1 (what the tunnel carries to)."""

    def __init__(self) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TunnelRig:
    def __init__(
        self, env: NpEnv, device: str = "web", client: str | None = None, relay443: bool = False
    ) -> None:
        self.env = env
        self.web = WebServer()
        self.client = client or env.atsign("client")
        self.device_atsign = env.atsign("device")
        self.relay = env.atsign("relay")
        self.device = device
        extra: list[str] = []
        if relay443:  # the single-port relay, escr only (srvd --443)
            p443 = free_port()
            extra = ["--443", "--443-bind-port", str(p443), "--443-advertise-port", str(p443),
                     "--refuse-payload-auth"]  # fmt: skip
        self.srvd = env.spawn(
            "srvd", "-a", self.relay, "-i", "127.0.0.1", "--bind", "127.0.0.1",
            "--drain-seconds", "0", "-v", *extra, ready=RELAY_READY, timeout=30,
        )  # fmt: skip
        env.spawn(
            "sshnpd", "-a", self.device_atsign, "-m", self.client, "-d", device,
            "--po", f"localhost:{self.web.port}", "-v", ready=DAEMON_READY, timeout=30,
        )  # fmt: skip

    def keys_file(self, atsign: str) -> Path:
        return self.env.home / ".atsign" / "keys" / f"{atsign}_key.atKeys"

    def profile_json(self, name: str = "web page", local_port: int = 0, **more: object) -> dict:
        return {
            "displayName": name,
            "sshnpdAtsign": self.device_atsign,
            "deviceName": self.device,
            "relayAtsign": self.relay,
            "remoteHost": "localhost",
            "remotePort": self.web.port,
            "localPort": local_port,
            "connectUriProtocol": "http",
            **more,
        }

    def close(self) -> None:
        self.web.close()
