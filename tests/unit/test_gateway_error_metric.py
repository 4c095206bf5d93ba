"""fnsession_gateway_errors_total counts the answers the gateway gives itself with an error status, by
status, with a zero series for every status it can give before the first one (the alert rules' rates
need a series). Its export on a live gateway is checked by tests/integration/test_prometheus.py."""

from __future__ import annotations

from fnsession.gateway import http


def test_error_answers_are_counted_by_status_and_successes_are_not() -> None:
    before = dict(http.ERROR_ANSWERS)
    http.count_error(200)
    http.count_error(502)
    http.count_error(502)
    http.count_error(599)
    after = http.ERROR_ANSWERS
    assert after[502] == before[502] + 2 and after[599] == before.get(599, 0) + 1 and 200 not in after
    assert {400, 408, 429, 502, 503, 504, 505} <= set(before), "each status the gateway gives has a series from the start"
