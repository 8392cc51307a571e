"""Inputs nobody chose, at the outgoing-HTTP layer and in failure answers: any URL (user, path and query
holding a secret), any ``Retry-After`` text, any text around a secret. Whatever the input, an error or an
answer shows only the target's scheme and host, a wait is a finite number of seconds or None, and a planted
secret never survives scrubbing."""

from __future__ import annotations

import math
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from shared.errors import DownstreamError
from shared.failure_answers import failure_answer, scrub
from shared.outgoing_http import PROBE, HttpCaller, origin, retry_after_s
from tests.fakes.http import FakeHttp
from tests.fuzz.test_parsers import FUZZ_EXAMPLES

pytestmark = pytest.mark.unit

fuzz = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SAFE = string.ascii_letters + string.digits + "-._~"
secrets = st.text(SAFE, min_size=12, max_size=24).map(lambda s: f"S3CR{s}")
jwt_parts = st.text(string.ascii_letters + string.digits + "-_", min_size=12, max_size=24)  # base64url
hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True)
anything = st.text(max_size=60)


@fuzz
@given(hosts, secrets, secrets, secrets, secrets, st.one_of(st.none(), st.integers(1, 65535)))
def test_origin_shows_scheme_host_and_port_and_nothing_of_user_path_or_query(
    host: str, user: str, path: str, query: str, fragment: str, port: int | None
) -> None:
    url = f"https://{user}:pw{user}@{host}{f':{port}' if port else ''}/{path}/x?sig={query}#{fragment}"
    shown = origin(url)
    assert shown == f"https://{host}{f':{port}' if port else ''}"
    assert not any(secret in shown for secret in (user, path, query, fragment))


@fuzz
@given(anything, st.sampled_from(["?", "#", "/"]), secrets)
def test_origin_of_any_text_never_shows_what_follows_its_host(text: str, separator: str, secret: str) -> None:
    assert secret not in origin(f"{text}{separator}{secret}")


class Answered:
    def __init__(self, header: str) -> None:
        self.headers = {"Retry-After": header}


@fuzz
@given(st.one_of(anything, st.floats(allow_nan=True).map(str), st.integers().map(str)))
def test_any_retry_after_is_a_finite_wait_or_none(header: str) -> None:
    wait = retry_after_s(Answered(header), now=lambda: 1_800_000_000.0)  # type: ignore[arg-type]
    assert wait is None or (math.isfinite(wait) and wait >= 0)


@fuzz
@given(anything, anything, secrets, jwt_parts, st.sampled_from(["query", "bearer", "jwt"]))
def test_a_planted_secret_never_survives_scrubbing(before: str, after: str, secret: str, part: str, kind: str) -> None:
    planted, hidden = {
        "query": (f"https://sink.example/in?sig={secret}", secret),
        "bearer": (f"Bearer {secret}", secret),
        "jwt": (f"eyJhbGciOi.eyJzdWIi{part}.c2ln{part}", part),
    }[kind]
    assume(hidden not in before + after)
    assert hidden not in scrub(f"{before} {planted} {after}")


@fuzz
@given(hosts, secrets, secrets)
def test_a_call_that_fails_shows_no_path_or_query_in_its_error_or_its_answer(host: str, path: str, query: str) -> None:
    session = FakeHttp().session()  # no route: every host refuses the connection
    url = f"https://{host}/{path}?code={query}"
    with pytest.raises(DownstreamError) as failed:
        HttpCaller(session, PROBE).send("GET", url)
    answer: Any = failure_answer(failed.value, "fuzz_outgoing_failure")
    for shown in (str(failed.value), repr(failed.value), str(answer.body)):
        assert path not in shown
        assert query not in shown
    assert answer.status == 503  # no answer: a retry may help
