#!/usr/bin/python
"""Set an entry's password in the local slapd, only when it is not already that one."""

from __future__ import annotations

import base64
import hashlib
import hmac
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    import ldap
except ImportError:
    ldap = None
    LDAP_ERROR = traceback.format_exc()
else:
    LDAP_ERROR = None

try:
    from argon2 import low_level as argon2
except ImportError:
    argon2 = None

DOCUMENTATION = r"""
module: openldap_password
short_description: Set an entry's userPassword in the local slapd, idempotently
description:
  - Connects to the local slapd over ldapi:/// as the host's root (SASL EXTERNAL).
  - Reads the entry's stored hash and checks the password against it on the host,
    without a bind, so that the check never counts as a failed login for the
    password policy.
  - When the password differs, or is stored with another scheme than O(scheme), sets
    it with the Password Modify extended operation, so that slapd hashes it
    (password-hash); the clear password never reaches a file or a log.
options:
  dn:
    description: The entry.
    type: str
    required: true
  password:
    description: The password, in clear.
    type: str
    required: true
  scheme:
    description: The scheme that slapd hashes with; a hash of another scheme is replaced.
    type: str
    default: "{ARGON2}"
  server_uri:
    description: The local slapd.
    type: str
    default: ldapi:///
requirements: [python3-ldap, python3-argon2]
"""

EXAMPLES = r"""
- name: Set the SSO account's password
  openldap_password:
    dn: cn=sso,ou=services,dc=ch-exemple,dc=fr
    password: "{{ openldap_sso_bind_password }}"
  no_log: true
"""

RETURN = r"""
dn:
  description: The entry.
  type: str
  returned: always
"""

SALTED_SHA = {"{SSHA}": hashlib.sha1, "{SSHA256}": hashlib.sha256, "{SSHA512}": hashlib.sha512}


def matches(stored: bytes, password: str) -> tuple[bool, str]:
    """Whether ``password`` is the one of the stored hash, and the hash's scheme."""
    # slapd's argon2 module stores the hash with trailing NUL bytes.
    stored = stored.rstrip(b"\0")
    secret = password.encode("utf-8")
    scheme, _, rest = stored.partition(b"}")
    scheme_name = (scheme + b"}").decode("ascii", "replace").upper()
    if scheme_name == "{ARGON2}" and argon2 is not None:
        kind = argon2.Type.ID if rest.startswith(b"$argon2id$") else argon2.Type.I
        try:
            return argon2.verify_secret(rest, secret, kind), scheme_name
        except Exception:  # VerifyMismatchError, or a hash it cannot read
            return False, scheme_name
    if scheme_name in SALTED_SHA:
        digest = SALTED_SHA[scheme_name]
        try:
            raw = base64.b64decode(rest)
        except ValueError:
            return False, scheme_name
        size = digest().digest_size
        expected, salt = raw[:size], raw[size:]
        return hmac.compare_digest(digest(secret + salt).digest(), expected), scheme_name
    return False, scheme_name


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "dn": {"type": "str", "required": True},
            "password": {"type": "str", "required": True, "no_log": True},
            "scheme": {"type": "str", "default": "{ARGON2}"},
            "server_uri": {"type": "str", "default": "ldapi:///"},
        },
        supports_check_mode=True,
    )
    if ldap is None:
        module.fail_json(msg=missing_required_lib("python3-ldap"), exception=LDAP_ERROR)
    dn, password = module.params["dn"], module.params["password"]
    try:
        connection = ldap.initialize(module.params["server_uri"])
        connection.sasl_external_bind_s()
        try:
            found = connection.search_s(dn, ldap.SCOPE_BASE, attrlist=["userPassword"])
        except ldap.NO_SUCH_OBJECT:
            found = []
        if not found:
            if module.check_mode:
                module.exit_json(changed=True, dn=dn, msg="the entry would be made first")
            module.fail_json(msg=f"{dn}: no such entry", dn=dn)
        stored = found[0][1].get("userPassword", [])
        if any(
            ok and scheme == module.params["scheme"].upper()
            for ok, scheme in (matches(value, password) for value in stored)
        ):
            module.exit_json(changed=False, dn=dn)
        if not module.check_mode:
            connection.passwd_s(dn, None, password)
    except ldap.LDAPError as error:
        module.fail_json(msg=f"{dn}: {error}", dn=dn)
    module.exit_json(changed=True, dn=dn)


if __name__ == "__main__":
    main()
