"""Public key login in one round trip: the key's signed request goes with the service request.

paramiko asks for the ``ssh-userauth`` service, waits for the server's accept, and only then
sends the signed login: two round trips per hop, where the protocol lets the client send both
at once (the server handles them in order, as OpenSSH's sshd does; nothing in the login depends
on the accept). ``login_with_key`` sends them together, in one write, behind the NEWKEYS that
ssh.stalls holds back. RSA keys keep paramiko's order: their signature algorithm depends on
the server's ``server-sig-algs``, which may not have been read yet when the login starts.
"""

from __future__ import annotations

import threading

import paramiko
from paramiko.auth_handler import AuthHandler
from paramiko.common import cMSG_SERVICE_REQUEST, cMSG_USERAUTH_REQUEST

from deployer.ssh.stalls import holding


def login_with_key(transport: paramiko.Transport, user: str, key: paramiko.PKey) -> list[str]:
    """Authenticate with key as paramiko's Transport.auth_publickey does (same result, same
    exceptions), in one round trip where the key allows."""
    if "rsa" in key.get_name():
        return list(transport.auth_publickey(user, key))
    if not transport.is_active() or not transport.initial_kex_done:
        raise paramiko.SSHException("No existing session")
    handler = AuthHandler(transport)
    done = threading.Event()

    def request_both() -> None:
        service = paramiko.Message()
        service.add_byte(cMSG_SERVICE_REQUEST)
        service.add_string("ssh-userauth")
        with holding(transport):
            transport._send_message(service)
        transport._send_message(_signed_request(handler, transport, user, key))

    handler._request_auth = request_both
    handler._parse_service_accept = lambda message: None
    transport.auth_handler = handler
    handler.auth_publickey(user, key, done)
    return list(handler.wait_for_response(done))


def _signed_request(
    handler: AuthHandler, transport: paramiko.Transport, user: str, key: paramiko.PKey
) -> paramiko.Message:
    """The USERAUTH_REQUEST paramiko sends once the service is accepted (publickey, signed)."""
    key_type, blob = handler._get_key_type_and_bits(key)
    algorithm = handler._finalize_pubkey_algorithm(key_type)
    request = paramiko.Message()
    request.add_byte(cMSG_USERAUTH_REQUEST)
    request.add_string(user)
    request.add_string("ssh-connection")
    request.add_string("publickey")
    request.add_boolean(True)
    request.add_string(algorithm)
    request.add_string(blob)
    session = handler._get_session_blob(key, "ssh-connection", user, algorithm)
    request.add_string(key.sign_ssh_data(session, algorithm))
    return request
