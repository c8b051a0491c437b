"""A tiny reverse proxy that adds request headers, as Mimir users put nginx in front of it.

Prometheus 2.42 does not send its remote_write `headers:` (no X-Scope-OrgID), so integration
tests put this between Prometheus and urdar: `python -m tests.support.header_proxy
--listen PORT --target http://127.0.0.1:URDAR --header X-Scope-OrgID=tenant`. Twisted's
ReverseProxyResource forwards method, path, body and headers; the status and body come back as is.
Prints `listening <port>` once bound (port 0 picks a free one)."""
import argparse
import sys
from urllib.parse import urlsplit

from twisted.internet import reactor
from twisted.web import proxy, resource, server


class AddHeaders(resource.Resource):
    isLeaf = True

    def __init__(self, host, port, headers):
        super().__init__()
        self.headers = headers
        self.host, self.port = host, port

    def render(self, request):
        for name, value in self.headers:
            request.requestHeaders.setRawHeaders(name, [value])
        # ReverseProxyResource sends its own path (plus the query string) upstream.
        return proxy.ReverseProxyResource(self.host, self.port, request.path).render(request)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--listen", type=int, default=0)
    p.add_argument("--target", required=True)
    p.add_argument("--header", action="append", default=[])
    args = p.parse_args(argv)
    target = urlsplit(args.target)
    headers = [tuple(h.encode().split(b"=", 1)) for h in args.header]
    site = server.Site(AddHeaders(target.hostname, target.port, headers))
    site.noisy = False
    port = reactor.listenTCP(args.listen, site, interface="127.0.0.1")
    print("listening %d" % port.getHost().port, flush=True)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
