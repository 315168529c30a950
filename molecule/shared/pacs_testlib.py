"""Helpers shared by the testinfra verifiers of every Molecule scenario.

Each scenario's tests/conftest.py puts this folder on sys.path.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyotp
import requests
import testinfra

RECAP = re.compile(r"^(?P<host>\S+)\s*:\s*ok=\d+\s+changed=(?P<changed>\d+)\s", re.M)


def ssh_config() -> Path:
    """The scenario's ssh config (its hosts' addresses, its key, their pinned host keys).

    ``pacsctl lab scenario up`` writes it in Molecule's ephemeral folder at create.
    """
    return Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "ssh" / "config"


def host_spec(name: str) -> str:
    """A testinfra host spec that reaches ``name`` over SSH, as Ansible does."""
    return f"ssh://{name}?ssh_config={ssh_config()}"


def lab_host(name: str) -> testinfra.host.Host:
    """A scenario host, reached the way Ansible reaches it (SSH, the scenario's key)."""
    return testinfra.get_host(host_spec(name))


def address_of(host: testinfra.host.Host) -> str:
    """The host's IPv4 address on its scenario network."""
    out = host.check_output("ip -4 -o addr show scope global")
    match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    assert match, f"no global IPv4 address in: {out}"
    return match.group(1)


def tcp_connects(
    client: testinfra.host.Host, address: str, port: int, timeout: float = 3.0
) -> bool:
    """True if ``client`` completes a TCP handshake with address:port."""
    script = (
        "import socket,sys\n"
        f"s=socket.socket(); s.settimeout({timeout})\n"
        f"sys.exit(0 if s.connect_ex(('{address}', {port})) == 0 else 1)\n"
    )
    return client.run(f"python3 -c {_quote(script)}").rc == 0


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def molecule_inventory() -> str:
    """The scenario's whole inventory, as Molecule gives it to Ansible: its folder.

    MOLECULE_INVENTORY_FILE alone holds the hosts; the groups of the scenario's
    provisioner inventory (pacs_database...) are in other files of the same folder.
    """
    return str(Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent)


def run_check_mode(playbook: str | None = None) -> tuple[dict[str, int], str]:
    """Run the scenario's converge playbook in check mode.

    Returns the changed count per host and the tasks that changed.

    Uses the inventory and Ansible settings that Molecule gives the verifier.
    """
    scenario = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
    play = playbook or str(scenario / "converge.yml")
    proc = subprocess.run(
        [
            "ansible-playbook",
            "-i",
            molecule_inventory(),
            play,
            "--check",
            "--diff",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"},
    )
    assert proc.returncode == 0, f"check mode failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    recap = {m["host"]: int(m["changed"]) for m in RECAP.finditer(proc.stdout)}
    assert recap, f"no PLAY RECAP in:\n{proc.stdout[-2000:]}"
    return recap, _changed_tasks(proc.stdout)


def _changed_tasks(output: str) -> str:
    """The tasks that reported a change, to explain a failed assertion."""
    task, found = "", []
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line
        elif line.startswith("changed:"):
            found.append(f"{task} {line}")
    return "\n".join(found)


def run_playbook(playbook: str, *args: str, inventories: Sequence[str] = ()) -> tuple[int, str]:
    """Run a playbook on the scenario's hosts; return its exit status and its output.

    Uses Molecule's inventory and Ansible settings, plus ``inventories`` (more inventory
    sources layered on top, e.g. a folder that overrides some host variables).
    """
    command = ["ansible-playbook", "-i", molecule_inventory()]
    for extra in inventories:
        command += ["-i", extra]
    proc = subprocess.run(
        [*command, playbook, *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"},
    )
    return proc.returncode, proc.stdout + proc.stderr


def dcmtk(tool: str) -> str:
    """Path of a dcmtk command (``echoscu``, ``storescu``...) from Debian's dcmtk.

    The virtualenv may hold Python tools of the same names (pynetdicom's apps) first
    on PATH; the verifiers drive the system with dcmtk, which nobody here wrote.
    """
    for folder in ("/usr/bin", "/usr/local/bin"):
        path = Path(folder) / tool
        if path.exists():
            return str(path)
    raise FileNotFoundError(f"{tool} not found: install Debian's dcmtk (make prereqs)")


@contextlib.contextmanager
def storescp(aet: str, port: int) -> Iterator[Path]:
    """dcmtk's storescp on this machine, on every address: a workstation, as OsiriX.

    Each object received is a file of its own (``+uf``), even one received twice.
    The hosts reach this machine at their network's gateway.
    """
    folder = Path(tempfile.mkdtemp(prefix=f"pacs-{aet.lower()}-"))
    proc = subprocess.Popen(
        [dcmtk("storescp"), "-aet", aet, "-od", str(folder), "+uf", "-dhl", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(0.5)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    try:
        yield folder
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


class ExecTunnel:
    """A local TCP port that reaches ``127.0.0.1:port`` inside a container.

    For services that listen for their own host only (Orthanc's HTTP). A small
    forwarder runs on this machine inside the container's network namespace
    (``nsenter -n``, as root) and listens on a Unix socket; each connection to the
    local port goes through it to the service's loopback, so that a real client on
    this machine (dicomweb-client) talks to the service as a local process would.
    Use as a context manager; ``.url`` is http://127.0.0.1:N.
    """

    FORWARDER = (
        "import os,socket,sys,threading\n"
        "path,port=sys.argv[1],int(sys.argv[2])\n"
        "srv=socket.socket(socket.AF_UNIX); srv.bind(path); srv.listen(64)\n"
        "def pump(a,b):\n"
        "    try:\n"
        "        while (d:=a.recv(1<<20)): b.sendall(d)\n"
        "    except OSError: pass\n"
        "    try: b.shutdown(socket.SHUT_WR)\n"
        "    except OSError: pass\n"
        "while True:\n"
        "    c,_=srv.accept(); t=socket.create_connection(('127.0.0.1',port))\n"
        "    threading.Thread(target=pump,args=(c,t),daemon=True).start()\n"
        "    threading.Thread(target=pump,args=(t,c),daemon=True).start()\n"
    )

    def __init__(self, container: str, port: int) -> None:
        self.container, self.port = container, port
        self._dir = tempfile.mkdtemp(prefix="pacs-tunnel-")
        self._path = f"{self._dir}/sock"
        self._server = socket.create_server(("127.0.0.1", 0))
        self.local_port = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.local_port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ExecTunnel:
        pid = subprocess.run(
            ["podman", "inspect", "-f", "{{.State.Pid}}", self.container],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        self._proc = subprocess.Popen(
            [
                "nsenter",
                "-t",
                pid,
                "-n",
                "python3",
                "-c",
                self.FORWARDER,
                self._path,
                str(self.port),
            ]
        )
        for _ in range(50):
            if Path(self._path).exists():
                break
            time.sleep(0.1)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.close()
        if self._proc:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        shutil.rmtree(self._dir, ignore_errors=True)

    def _accept(self) -> None:
        def pump(src: Any, dst: Any) -> None:
            try:
                while data := src.recv(1 << 20):
                    dst.sendall(data)
            except OSError:
                pass
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            inner = socket.socket(socket.AF_UNIX)
            inner.connect(self._path)
            threading.Thread(target=pump, args=(conn, inner), daemon=True).start()
            threading.Thread(target=pump, args=(inner, conn), daemon=True).start()


def orthanc_config(host: testinfra.host.Host) -> dict[str, Any]:
    """The archive's orthanc.json (as root), without its // comment lines."""
    text = host.check_output("cat /etc/orthanc/orthanc.json")
    return dict(
        json.loads(
            "".join(line for line in text.splitlines(True) if not line.lstrip().startswith("//"))
        )
    )


def orthanc_credentials(host: testinfra.host.Host) -> tuple[str, str]:
    """The administrator's HTTP account, read from the archive's orthanc.json."""
    user, password = next(iter(orthanc_config(host)["RegisteredUsers"].items()))
    return str(user), str(password)


def sign_in(url: str, ca: str, name: str, password: str) -> str:
    """A pacs-web session (the pacs_session cookie), signed in through its form at url.

    The form as a browser fills it: GET /login for its CSRF token and pacs_login
    cookie, then POST the name and password, which pacs-web answers with 303.
    """
    form = requests.get(f"{url}/login?next=/", verify=ca, timeout=60)
    assert form.status_code == 200, form.text[:500]
    csrf = form.text.split('name="csrf" value="')[1].split('"')[0]
    answer = requests.post(
        f"{url}/login",
        data={"csrf": csrf, "next": "/", "username": name, "password": password},
        cookies={"pacs_login": form.cookies["pacs_login"]},
        verify=ca,
        allow_redirects=False,
        timeout=60,
    )
    assert answer.status_code == 303, f"signing in as {name}: {answer.status_code} {answer.text}"
    return str(answer.cookies["pacs_session"])


@contextlib.contextmanager
def resolving(names: dict[str, str]) -> Iterator[None]:
    """Names that no DNS of this machine knows (a scenario's SSO names), mapped to addresses,
    for this test process only: TLS, Host headers and cookies still see the names."""
    real = socket.getaddrinfo

    def lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        return real(names.get(host, host), *args, **kwargs)

    socket.getaddrinfo = lookup  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.getaddrinfo = real  # type: ignore[assignment]


def _hidden_fields(page: str, form_marker: str) -> dict[str, str]:
    """The hidden inputs of the first form whose tag contains ``form_marker``."""
    start = page.find(form_marker)
    assert start >= 0, f"no form {form_marker!r} in: {page[:500]}"
    form = page[start : page.find("</form>", start)]
    return dict(
        re.findall(r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form)
    )


class SsoClient:
    """A client of the single sign-on (LemonLDAP::NG's portal), as a browser uses it.

    It follows no redirect by itself, so that a test sees each step: the page asked
    for, the portal's form, the TOTP form, and the way back with the SSO cookie.
    """

    def __init__(self, ca: str) -> None:
        self.http = requests.Session()
        self.http.verify = ca
        # Else REQUESTS_CA_BUNDLE, when set, would replace the deployment's CA.
        self.http.trust_env = False

    @property
    def signed_in(self) -> bool:
        return any(c.name == "lemonldap" for c in self.http.cookies)

    def sign_in(
        self, page_url: str, user: str, password: str, totp_secret: str | None
    ) -> requests.Response:
        """Ask for ``page_url``, sign in on the portal it sends to, and answer its TOTP form.

        Returns the portal's last answer (a redirect back to the page when all went well;
        the TOTP form itself when it asks for a code and no secret is given).
        """
        first = self.http.get(page_url, allow_redirects=False, timeout=60)
        assert first.status_code == 302, f"{page_url}: {first.status_code} {first.text[:300]}"
        portal_url = first.headers["Location"]
        form = self.http.get(portal_url, timeout=60)
        assert form.status_code == 200, form.text[:500]
        base = portal_url.split("?", 1)[0]
        fields = _hidden_fields(form.text, 'id="lform"')
        fields.update(user=user, password=password)
        answer = self.http.post(base, data=fields, allow_redirects=False, timeout=60)
        if "totp2fcheck" in answer.text and totp_secret:
            step = _hidden_fields(answer.text, 'action="/totp2fcheck"')
            step["code"] = pyotp.TOTP(totp_secret).now()
            answer = self.http.post(
                f"{base}totp2fcheck", data=step, allow_redirects=False, timeout=60
            )
        return answer

    def oidc_access_token(self, portal: str, client_id: str, redirect_uri: str) -> str:
        """An access token for ``client_id`` by the code flow with PKCE (as OHIF gets one)."""
        verifier = secrets.token_urlsafe(48)
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        query = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": "openid profile email",
            "state": secrets.token_urlsafe(8),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        answer = self.http.get(
            f"{portal}oauth2/authorize", params=query, allow_redirects=False, timeout=60
        )
        assert answer.status_code == 302, f"authorize: {answer.status_code} {answer.text[:300]}"
        location = answer.headers["Location"]
        assert location.startswith(redirect_uri), location
        code = parse_qs(urlsplit(location).query)["code"][0]
        # The token endpoint is called by the viewer's page, without the SSO cookie.
        token = requests.post(
            f"{portal}oauth2/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "client_id": client_id,
                "code_verifier": verifier,
            },
            verify=self.http.verify,
            timeout=60,
        )
        assert token.status_code == 200, f"token: {token.status_code} {token.text[:300]}"
        return str(token.json()["access_token"])
