#!/usr/bin/python3
"""SCENARIO STAND-IN for pacs-web's /auth (the pacs_services role), in this
scenario's prepare step only: the gateway's verifier needs an answer to the
hook's subrequests before the real service is merged. It follows the contract
(COMMON: 204 + X-Pacs-User, 401, 403 for STOW without the right) with two test
users read from a JSON file; /login, /logout and /iid answer a plain page.
The whole-stack scenario runs the real service.
"""

import base64
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

with open(sys.argv[1], encoding="utf-8") as users:
    USERS = json.load(users)  # {name: {password, rights, session}}


class Handler(BaseHTTPRequestHandler):
    def user(self):
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if name in USERS and USERS[name]["password"] == password:
                return name
        for part in self.headers.get("Cookie", "").split(";"):
            key, _, value = part.strip().partition("=")
            for name, user in USERS.items():
                if key == "pacs_session" and value == user["session"]:
                    return name
        return None

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/auth":
            name = self.user()
            method = self.headers.get("X-Original-Method", "GET")
            if name is None:
                self.answer(401, [("WWW-Authenticate", 'Basic realm="pacs"')])
            elif method not in ("GET", "HEAD") and "stow" not in USERS[name]["rights"]:
                self.answer(403)
            else:
                self.answer(204, [("X-Pacs-User", name), ("X-Pacs-Auth", "stand-in")])
            return
        body = json.dumps(
            {"stand_in": path, "uri": self.path, "user": self.headers.get("X-Pacs-User", "")}
        ).encode()
        self.answer(200, [("Content-Type", "application/json")], body)

    do_POST = do_GET

    def answer(self, status, headers=(), body=b""):
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Handler).serve_forever()
