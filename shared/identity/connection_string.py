"""Dataverse connection strings (``AuthType=ClientSecret;Url=...;ClientId=...;ClientSecret=...``).

Grammar as the Dataverse ServiceClient reads it: ``key=value`` pairs separated by ``;``, keys
case-insensitive with a few aliases, values optionally quoted with ``'`` or ``"`` (a doubled quote
inside is a literal quote, and ``;`` inside quotes is literal).
"""

from __future__ import annotations

from shared.errors import CredentialFormatError

# Canonical key -> accepted spellings (lower case, spaces removed).
KEY_ALIASES: dict[str, tuple[str, ...]] = {
    "authtype": ("authtype", "authenticationtype"),
    "url": ("url", "serviceuri", "server"),
    "clientid": ("clientid", "appid", "applicationid"),
    "clientsecret": ("clientsecret", "secret"),
    "thumbprint": ("thumbprint", "certthumbprint", "certificatethumbprint"),
    "username": ("username", "userid", "user"),
    "password": ("password",),
    "tenantid": ("tenantid",),
}
_CANONICAL = {alias: key for key, aliases in KEY_ALIASES.items() for alias in aliases}


def looks_like_connection_string(text: str) -> bool:
    """True when ``text`` is a connection string rather than a bare secret value."""
    try:
        pairs = parse_connection_string(text)
    except CredentialFormatError:
        return False
    return "authtype" in pairs or ("url" in pairs and "clientid" in pairs)


def parse_connection_string(text: str) -> dict[str, str]:
    """Parse into ``{canonical key: value}``; unknown keys are kept under their lower-cased name.

    Raises CredentialFormatError naming the problem (never echoing a value).
    """
    pairs: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t\r\n;":
            i += 1
        if i >= n:
            break
        eq = text.find("=", i)
        if eq < 0:
            raise CredentialFormatError(
                "connection string: a part has no '=' (expected Key=Value pairs separated by ';')"
            )
        raw_key = text[i:eq].strip()
        i = eq + 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] in "'\"":
            quote = text[i]
            i += 1
            chunks: list[str] = []
            while True:
                end = text.find(quote, i)
                if end < 0:
                    raise CredentialFormatError(f"connection string: the value of {raw_key} has an unclosed quote")
                chunks.append(text[i:end])
                if end + 1 < n and text[end + 1] == quote:
                    chunks.append(quote)
                    i = end + 2
                    continue
                i = end + 1
                break
            value = "".join(chunks)
            while i < n and text[i] in " \t":
                i += 1
            if i < n and text[i] != ";":
                raise CredentialFormatError(f"connection string: unexpected text after the quoted value of {raw_key}")
        else:
            end = text.find(";", i)
            end = n if end < 0 else end
            value = text[i:end].strip()
            i = end
        key = raw_key.lower().replace(" ", "")
        if not key:
            raise CredentialFormatError("connection string: a part has an empty key")
        pairs[_CANONICAL.get(key, key)] = value
    return pairs
