"""Webhook alerts against a real HTTP receiver on loopback: statuses, metric rules, retries, the gap."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contract.spec import AlertRule, AlertsSpec, SpecError, parse_spec
from integrations.alerts import RunAlerts, Webhooks, merged_alerts
from integrations.trackers import Point


def test_rule_text_and_firing():
    r = AlertRule.model_validate("acc_mean < 0.3 after cycle 2")
    assert (r.key, r.op, r.value, r.after_cycle, r.expert) == ("acc_mean", "<", 0.3, 2, None)
    assert r.fires("merged", "acc_mean", 2, 0.1) and not r.fires("merged", "acc_mean", 1, 0.1)
    assert not r.fires("merged", "acc_mean", 3, 0.3) and not r.fires("merged", "acc/text", 3, 0.1)
    g = AlertRule.model_validate("text:rollout/logp_gap > 0.5")
    assert g.expert == "text" and g.fires("text", "rollout/logp_gap", 0, 0.6) and not g.fires("image", "rollout/logp_gap", 0, 0.6)
    assert str(g) == "text:rollout/logp_gap > 0.5"
    assert AlertRule.model_validate("acc/text >= 0.9").fires("text", "acc/text", 1, 0.9)


@pytest.mark.parametrize("rule,msg", [("nonsense", "not a rule"), ("made/up < 1", "not a registered metric key")])
def test_bad_rules_name_the_field(rule, msg):
    with pytest.raises(SpecError, match=rf"alerts\.rules\.0.*{msg}"):
        parse_spec({"name": "r", "strategy": "independent", "experts": [{"name": "a", "domain": "builtin:arith"}],
                    "alerts": {"webhooks": ["http://x/y"], "rules": [rule]}})
    with pytest.raises(ValidationError):
        AlertsSpec(webhooks=["ftp://nope"])


def test_status_and_rule_alerts_are_posted_once(receiver):
    alerts = RunAlerts("copd run demo (run-1)", "http://dash/run?run=1",
                       AlertsSpec(webhooks=[receiver.url], rules=["acc_mean < 0.3 after cycle 1"]))
    hooks = Webhooks(retry_s=(0.01, 0.01, 0.01))
    pts = [Point("merged", "acc_mean", 10, 0.2, 0.0, 0), Point("merged", "acc_mean", 20, 0.2, 0.0, 1),
           Point("merged", "acc_mean", 30, 0.1, 0.0, 2)]
    for text in alerts.on_points(pts):
        hooks.send(alerts.urls, text)
    assert alerts.on_status("cancelled") is None   # not in `on`
    hooks.send(alerts.urls, alerts.on_status("crashed", "no heartbeat for 300 s"))
    texts = receiver.wait_for(2)
    hooks.close()
    assert len(texts) == 2, texts  # the rule fired once (cycle 1, step 20), not again at step 30
    assert "acc_mean = 0.2 at cycle 1 step 20" in texts[0] and "http://dash/run?run=1" in texts[0]
    assert texts[1].startswith(":rotating_light: copd run demo (run-1) crashed: no heartbeat")


def test_webhook_retries_then_delivers(receiver):
    receiver.fail_first = 2
    heard = []
    hooks = Webhooks(lambda level, message: heard.append(message), retry_s=(0.01, 0.01, 0.01))
    hooks.send([receiver.url], "run failed")
    assert receiver.wait_for(1) == ["run failed"]
    hooks.close()
    assert receiver.attempts == 3 and heard == []


def test_an_undeliverable_alert_is_reported_not_raised(receiver):
    receiver.status = 404
    heard = []
    hooks = Webhooks(lambda level, message: heard.append((level, message)), retry_s=(0.01,))
    hooks.send([receiver.url, "http://127.0.0.1:9/closed"], "run completed")
    hooks.close()
    assert receiver.attempts == 1  # a 4xx is not retried
    assert [lvl for lvl, _ in heard] == ["warning", "warning"]
    assert "(HTTP 404) after 1 tries" in heard[0][1] and "ConnectError" in heard[1][1] and "after 2 tries" in heard[1][1]


def test_deployment_alerts_join_the_runs():
    run = AlertsSpec(webhooks=["http://a/1"], on=["failed"], rules=["acc_mean < 0.5"])
    both = merged_alerts(run, "http://b/2, http://a/1", "crashed,failed", "rollout/logp_gap > 1; acc_mean < 0.5")
    assert both.webhooks == ["http://a/1", "http://b/2"] and both.on == ["failed", "crashed"]
    assert [str(r) for r in both.rules] == ["acc_mean < 0.5", "rollout/logp_gap > 1"]
    assert merged_alerts(AlertsSpec(), None, "crashed", "acc_mean < 1").webhooks == []


def test_copd_train_refuses_an_unknown_tracker_in_the_environment(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from contract.settings import get_settings
    from copd.cli import app

    spec = tmp_path / "s.yaml"
    spec.write_text("name: r\nstrategy: independent\nexperts: [{name: a, domain: 'builtin:arith'}]\n")
    monkeypatch.setenv("COPD_REPORT_TO", "tensorboard,neptune")
    get_settings.cache_clear()
    try:
        res = CliRunner().invoke(app, ["train", str(spec), "--out", str(tmp_path / "out")])
    finally:
        get_settings.cache_clear()
    assert res.exit_code == 2 and "COPD_REPORT_TO: unknown tracker 'neptune'" in res.output, res.output
    assert not (tmp_path / "out").exists()
