"""
HTTP calls to the URLs an operator configured (the owners' notification webhook, GitHub's API):
no proxy from the environment, and no redirect followed, so a request and its credentials
(a signature, an API token) go to that URL and nowhere else.

URLs that someone else chose (key URLs, discovery documents) go through jwtauth.fetch instead.
"""

from __future__ import annotations

import urllib.request


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # the 3xx surfaces as an HTTPError: a failed call


def opener() -> urllib.request.OpenerDirector:
    """A urllib opener that uses no proxy and follows no redirect."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
