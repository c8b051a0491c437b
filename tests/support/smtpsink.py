"""An SMTP sink for tests: Twisted's own ESMTP server on 127.0.0.1 with STARTTLS (a self-signed
certificate made here with `cryptography`) and AUTH PLAIN/LOGIN/CRAM-MD5 against a user table;
it keeps each delivered message (recipient, raw bytes) and the HELO name and sender seen."""
import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.cred import checkers, portal
from twisted.cred.credentials import CramMD5Credentials
from twisted.internet import defer, ssl, task
from twisted.mail import smtp
from twisted.mail.imap4 import LOGINCredentials, PLAINCredentials
from zope.interface import implementer


def _reactor():
    from twisted.internet import reactor
    return reactor


def self_signed():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM)
    return ssl.PrivateCertificate.loadPEM(pem).options()


class _LOGIN(LOGINCredentials):
    """AUTH LOGIN with the challenges mail servers send ("Username:", "Password:"); Twisted's own
    ("User Name\\0") are refused by Alertmanager's LOGIN client, and so by urdar's."""

    def __init__(self):
        super().__init__()
        self.challenges = [b"Password:", b"Username:"]


@implementer(smtp.IMessage)
class _Message:
    def __init__(self, sink, rcpt):
        self.sink, self.rcpt, self.lines = sink, rcpt, []

    def lineReceived(self, line):
        self.lines.append(line)

    def eomReceived(self):
        self.sink.append((self.rcpt, b"\n".join(self.lines)))
        return defer.succeed(None)

    def connectionLost(self):
        pass


@implementer(smtp.IMessageDelivery)
class _Delivery:
    def __init__(self, sink, avatar):
        self.sink, self.avatar, self.froms = sink, avatar, []

    def receivedHeader(self, helo, origin, recipients):
        self.sink.helo = helo[0]
        return b"X-Authenticated-As: " + (self.avatar or b"anonymous")

    def validateFrom(self, helo, origin):
        self.sink.mail_from = str(origin)
        return origin

    def validateTo(self, user):
        return lambda: _Message(self.sink, str(user.dest))


class Sink(list):
    helo = mail_from = None
    auth = None


@implementer(portal.IRealm)
class _Realm:
    def __init__(self, sink):
        self.sink = sink

    def requestAvatar(self, avatar_id, mind, *interfaces):
        avatar = avatar_id if isinstance(avatar_id, bytes) else None
        return smtp.IMessageDelivery, _Delivery(self.sink, avatar), lambda: None


class SMTPSink:
    """Twisted's ESMTP server on 127.0.0.1: STARTTLS with `tls`, AUTH with `users`
    ({user: password}); anonymous senders allowed only without users."""

    def __init__(self, tls=True, users=None, mechs=(b"PLAIN", b"LOGIN", b"CRAM-MD5"),
                 interface="127.0.0.1", host="localhost"):
        self.messages = Sink()
        checker = checkers.InMemoryUsernamePasswordDatabaseDontUse(**(users or {}))
        chks = [checker] + ([] if users else [checkers.AllowAnonymousAccess()])
        the_portal = portal.Portal(_Realm(self.messages), chks)
        chal = {b"PLAIN": PLAINCredentials, b"LOGIN": _LOGIN, b"CRAM-MD5": CramMD5Credentials}
        ctx = self_signed() if tls else None
        factory = smtp.SMTPFactory(the_portal)

        self.protocols = []

        def build(addr):
            p = smtp.ESMTP({m: chal[m] for m in mechs}, ctx)
            p.timeout = None            # no 10-minute idle timer left behind
            self.protocols.append(p)
            p.portal = the_portal
            p.host = b"sink.local"
            p.factory = factory
            return p
        factory.buildProtocol = build
        self.port = _reactor().listenTCP(0, factory, interface=interface)
        self.smarthost = "%s:%d" % (host, self.port.getHost().port)

    def close(self):
        for p in self.protocols:
            if p.transport is not None and p.transport.connected:
                p.transport.abortConnection()
        d = defer.maybeDeferred(self.port.stopListening)
        # Let the aborted connections finish closing before the reactor is checked.
        return d.addCallback(lambda _: task.deferLater(_reactor(), 0.01, lambda: None))
