"""URL normalisation and host matching for the consent signals.

Two URLs that name the same resource must compare equal before a registry lookup or a robots.txt
match, so every opt-out parser goes through `normalise`. Nothing here raises on bad input: a
malformed URL gives `None`, and the caller records a not_evaluable signal with the reason.

>>> normalise("HTTP://Example.COM:80/%7euser/a%2fb?q=%e2%98%83#frag")
'http://example.com/~user/a%2Fb?q=%E2%98%83'
>>> domain_matches("img.example.com", "example.com"), domain_matches("badexample.com", "example.com")
(True, False)
"""

from __future__ import annotations

from urllib.parse import urlsplit

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Reserved characters and "%" stay literal when seen literally: encoding or decoding them can change
# what the URL means (RFC 3986 section 2.2).
_KEEP_LITERAL = frozenset(b":/?#[]@!$&'()*+,;=%")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21, "ws": 80, "wss": 443}
MAX_URL_CHARS = 64 * 1024


def normalise_percent(text: str, keep: frozenset[int] = _KEEP_LITERAL) -> str:
    """Percent-encoding in canonical form: unreserved octets decoded, other escapes upper-cased, and
    octets that may not appear literally (space, controls, non-ASCII as UTF-8) encoded.

    A "%" not followed by two hex digits is encoded as "%25" so that the result is stable under a
    second pass (normalise is idempotent). Undecodable text (surrogate escapes) keeps its raw bytes.

    >>> normalise_percent("/a b/%7e/%2f/é")
    '/a%20b/~/%2F/%C3%A9'
    """
    raw = text.encode("utf-8", "surrogateescape")
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        b = raw[i]
        if b == 0x25:  # "%"
            if i + 2 < n and raw[i + 1] in _HEX and raw[i + 2] in _HEX:
                value = int(raw[i + 1 : i + 3], 16)
                out.append(
                    chr(value)
                    if value in _UNRESERVED
                    else "%" + raw[i + 1 : i + 3].decode().upper()
                )
                i += 3
                continue
            out.append("%25")
        elif b in _UNRESERVED or (b in keep and b != 0x25):
            out.append(chr(b))
        else:
            out.append(f"%{b:02X}")
        i += 1
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, so "/a/./b/../c" and "/a/c" are the same resource."""
    if "." not in path:
        return path
    output: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                output.append("")
        elif seg == "..":
            if len(output) > 1:
                output.pop()
            if last:
                output.append("")
        else:
            output.append(seg)
    result = "/".join(output)
    return result if result.startswith("/") else "/" + result


def _idna_host(hostname: str) -> str | None:
    host = hostname.rstrip(".").lower()
    if not host:
        return None
    if host.startswith("[") or ":" in host:  # IPv6 literal
        return host if host.startswith("[") else f"[{host}]"
    if host.isascii():
        if any(c not in _HOST_CHARS for c in host):
            return None  # spaces, quotes, "<"...: not a host name
        labels = host.split(".")
        if any(not label or len(label) > 63 for label in labels):
            return None
        return host
    try:
        return host.encode("idna").decode("ascii").lower()
    except (UnicodeError, ValueError):
        return None


def _split(url: str):  # type: ignore[no-untyped-def]
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        return None
    if any(ord(c) < 0x20 for c in url.strip()):
        return None  # a control character inside a URL is a malformed row, not a resource
    try:
        parts = urlsplit(url.strip())
        port = parts.port  # raises ValueError on a non-numeric or out-of-range port
        hostname = parts.hostname
    except ValueError:
        return None
    if not parts.scheme or not hostname:
        return None
    return parts, port, hostname


def normalise(url: str) -> str | None:
    """The canonical form of an absolute URL, or None when it is malformed.

    Scheme and host lower-cased, host IDNA-encoded, default port dropped, percent-encoding normalised,
    dot segments removed, empty path made "/", fragment dropped.
    """
    split = _split(url)
    if split is None:
        return None
    parts, port, hostname = split
    scheme = parts.scheme.lower()
    host = _idna_host(hostname)
    if host is None:
        return None
    netloc = host
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        netloc = f"{host}:{port}"
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    if userinfo:
        netloc = normalise_percent(userinfo) + "@" + netloc
    path = _remove_dot_segments(normalise_percent(parts.path)) or "/"
    if not path.startswith("/"):
        path = "/" + path
    query = "?" + normalise_percent(parts.query) if parts.query else ""
    return f"{scheme}://{netloc}{path}{query}"


def host(url: str) -> str | None:
    """The lower-case, IDNA-encoded host of `url` (no port), or None when malformed.

    >>> host("https://Bücher.example:8443/x")
    'xn--bcher-kva.example'
    """
    split = _split(url)
    return None if split is None else _idna_host(split[2])


def origin(url: str) -> str | None:
    """`scheme://host[:port]` of the normalised URL: where /robots.txt and /.well-known/ live."""
    norm = normalise(url)
    if norm is None:
        return None
    scheme, rest = norm.split("://", 1)
    netloc = rest.split("/", 1)[0].rpartition("@")[2]
    return f"{scheme}://{netloc}"


def path_and_query(url: str) -> str | None:
    """The normalised path plus query ("/a/b?x=1") that robots.txt rules are matched against."""
    norm = normalise(url)
    if norm is None:
        return None
    rest = norm.split("://", 1)[1]
    slash = rest.find("/")
    return rest[slash:] if slash >= 0 else "/"


def domain_matches(host_name: str | None, domain: str | None) -> bool:
    """True when `host_name` is `domain` or one of its subdomains (label-wise, never a bare suffix).

    >>> domain_matches("A.Example.com.", "example.com"), domain_matches("example.com", "a.example.com")
    (True, False)
    """
    if not host_name or not domain:
        return False
    h, d = _idna_host(host_name.strip()), _idna_host(domain.strip().lstrip("."))
    if h is None or d is None:
        return False
    return h == d or h.endswith("." + d)
