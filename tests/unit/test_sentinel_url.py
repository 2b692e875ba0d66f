"""The redis+sentinel:// URL: what it accepts, and what it says about what it does not."""

from __future__ import annotations

import pytest

from longline._cli import main
from longline._store import check_redis_url
from longline._store._sentinel import SentinelURL, parse_sentinel_url


def test_the_full_form() -> None:
    parsed = parse_sentinel_url(
        "redis+sentinel://app:p%40ss@10.0.0.1:26380,sentinel-b:26381,[::1]:26382"
        "/mymaster/3?sentinel_password=s3cret"
    )
    assert parsed == SentinelURL(
        sentinels=(("10.0.0.1", 26380), ("sentinel-b", 26381), ("::1", 26382)),
        service_name="mymaster",
        db=3,
        username="app",
        password="p@ss",
        sentinel_password="s3cret",
    )
    assert "p@ss" not in repr(parsed) and "s3cret" not in repr(parsed)


def test_defaults_port_db_and_no_passwords() -> None:
    parsed = parse_sentinel_url("redis+sentinel://a,b:1/svc/")
    assert parsed.sentinels == (("a", 26379), ("b", 1))
    assert (parsed.service_name, parsed.db) == ("svc", 0)
    assert parsed.username is parsed.password is parsed.sentinel_password is None
    assert parse_sentinel_url("redis+sentinel://:pw@a:1/svc").password == "pw"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel:///svc", "names no sentinel"),
        ("redis+sentinel://a:1", "names no service"),
        ("redis+sentinel://a:1/", "names no service"),
        ("redis+sentinel://a:1/svc/zero", "database 'zero' that is not a number"),
        ("redis+sentinel://a:1/svc/0/x", "more than SERVICE_NAME/DB"),
        ("redis+sentinel://a:port/svc", "port is not 1-65535"),
        ("redis+sentinel://a:1,,b:2/svc", "sentinel address '' that is not host:port"),
        ("redis+sentinel://a:70000/svc", "port is not 1-65535"),
        ("redis+sentinel://a:1/svc?password=x", "unknown option(s) password"),
        ("redis+sentinel://user@a:1/svc", "has a user but no password"),
    ],
)
def test_a_malformed_url_says_what_to_fix(url: str, says: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_redis_url(url)
    message = str(caught.value)
    assert says in message
    assert "expected redis+sentinel://" in message and "e.g. redis+sentinel://" in message


def test_a_password_never_shows_in_the_error() -> None:
    with pytest.raises(ValueError) as caught:
        check_redis_url("redis+sentinel://app:hunter2@a:1")
    assert "hunter2" not in str(caught.value) and "app:***@a:1" in str(caught.value)


def test_other_urls_are_checked_too() -> None:
    check_redis_url("redis://127.0.0.1:6379/0")
    check_redis_url("rediss://:pw@example.com:6380/2")
    check_redis_url("unix:///tmp/redis.sock")
    for url in ("127.0.0.1:6379", "http://x", "redis://h:port/0"):
        with pytest.raises(ValueError, match="expected redis://.*for Sentinel redis\\+sentinel"):
            check_redis_url(url)


def test_the_control_plane_refuses_to_start_with_a_bad_url(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["control-plane", "--insecure-no-auth", "--redis", "redis+sentinel://a:1"])
    assert str(caught.value).startswith("longline control-plane: Redis URL 'redis+sentinel://a:1'")
    assert "names no service" in str(caught.value)
