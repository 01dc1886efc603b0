//! Error-spike alerts, end to end: the real service, a real PostgreSQL, the mock upstream failing on cue, and a real
//! SMTP server (aiosmtpd, see alerts/smtp.rs) receiving the mail.

mod smtp;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reliablegpt::config::env;
use reliablegpt::mock_upstream::Behavior;
use serde_json::{Value, json};
use smtp::{SmtpServer, free_port};

use crate::helpers::{
    GatewayTest, TestApp, assert_absent, canary_key, chat_body, error_of, spawn_app_with, spawn_gateway_with, token_of,
};

const OWNER: &str = "dev@example.com";
const OPS: &str = "ops@example.com";
const SECOND: Duration = Duration::from_secs(1);

/// Short intervals: one-second buckets, quick flushes, evaluations and outbox polls.
fn fast(e: &mut HashMap<String, String>, smtp_url: Option<&str>) {
    for (k, v) in [
        (env::ALERT_BUCKET_SECS, "1"),
        (env::ALERT_FLUSH_MS, "100"),
        (env::ALERT_EVALUATE_MS, "150"),
        (env::ALERT_OUTBOX_POLL_MS, "100"),
        (env::ALERT_RETRY_BASE_MS, "200"),
        (env::PUBLIC_URL, "https://gateway.example.com"),
    ] {
        e.insert(k.to_owned(), v.to_owned());
    }
    if let Some(url) = smtp_url {
        e.insert(env::SMTP_URL.to_owned(), url.to_owned());
    }
}

/// Spike rules a test can trip in a second: 3 failures in a 2-second window.
fn quick_rules(emails: &[&str]) -> Value {
    json!({"emails": emails, "min_errors": 3, "window_seconds": 2, "spike_factor": 3.0, "cooldown_seconds": 3600,
           "alert_on_total_failure": false})
}

async fn put_settings(app: &TestApp, token: &str, body: &Value) -> reqwest::Response {
    app.client.put(app.url("/v1/alerts/settings")).bearer_auth(token).json(body).send().await.unwrap()
}

async fn get_json(app: &TestApp, token: &str, path: &str) -> Value {
    let res = app.client.get(app.url(path)).bearer_auth(token).send().await.unwrap();
    assert_eq!(res.status(), 200, "{path}");
    res.json().await.unwrap()
}

/// The token of a verification email's link (which points at RELIABLEGPT_PUBLIC_URL).
fn link_token(mail: &Value) -> String {
    let text = mail["text"].as_str().unwrap();
    let start = text.find("https://gateway.example.com/v1/alerts/verify?token=").expect("a verification link");
    let link = text[start..].split_whitespace().next().unwrap();
    link.rsplit_once("token=").unwrap().1.to_owned()
}

async fn click(app: &TestApp, token: &str) -> (u16, String) {
    let res = app.client.get(app.url(&format!("/v1/alerts/verify?token={token}"))).send().await.unwrap();
    let status = res.status().as_u16();
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    (status, res.text().await.unwrap())
}

async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, within: Duration, mut check: impl FnMut() -> F) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until no email is waiting in the outbox (sent, capped or given up).
async fn outbox_settled(app: &TestApp) {
    wait_until("an empty outbox", 15 * SECOND, || async {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM alerts_outbox WHERE state = 'pending'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        pending == 0
    })
    .await;
}

/// A key set whose primary model fails over to gpt-4o-mini; returns (token, plaintext key).
async fn key_set(gw: &GatewayTest) -> (String, String) {
    let key = canary_key();
    let token = gw.key_set_with(json!([key]), json!({"fallback_strategy": ["gpt-4o-mini"]})).await;
    (token, key)
}

/// `n` requests from customer instance shop-42 while gpt-4o answers 500 (each: 3 failed attempts, then the fallback).
async fn burst(gw: &GatewayTest, app: &TestApp, token: &str, n: usize) {
    gw.mock.script("gpt-4o", vec![Behavior::server_error()]);
    for _ in 0..n {
        let res = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(token)
            .header("x-reliablegpt-instance", "shop-42")
            .json(&chat_body("gpt-4o"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "the fallback answers");
    }
    gw.mock.script("gpt-4o", vec![]);
}

async fn confirm(app: &TestApp, smtp: &SmtpServer, address: &str) {
    let mail = smtp.wait_for(address, "Confirm", 10 * SECOND).await;
    assert_eq!(click(app, &link_token(&mail)).await.0, 200);
}

#[tokio::test]
async fn settings_validation_rejects_bad_emails_and_negative_numbers() {
    let app = spawn_app_with(|e| fast(e, None)).await;
    let token = token_of(&app.create_key_set(json!([canary_key()])).await);
    let defaults = get_json(&app, &token, "/v1/alerts/settings").await;
    assert_eq!(
        (&defaults["enabled"], &defaults["min_errors"], &defaults["window_seconds"], &defaults["spike_factor"]),
        (&json!(true), &json!(5), &json!(300), &json!(3.0))
    );
    assert_eq!((&defaults["cooldown_seconds"], &defaults["alert_on_total_failure"]), (&json!(900), &json!(true)));
    assert_eq!(defaults["recipients"], json!([{"email": OWNER, "verified": false, "owner": true}]));
    for (body, param) in [
        (json!({"emails": ["not an address"]}), "emails[0]"),
        (json!({"emails": [OPS, "x@y"]}), "emails[1]"),
        (json!({"min_errors": -5}), "min_errors"),
        (json!({"window_seconds": -1}), "window_seconds"),
        (json!({"cooldown_seconds": -900}), "cooldown_seconds"),
        (json!({"spike_factor": -3.0}), "spike_factor"),
    ] {
        let error = error_of(put_settings(&app, &token, &body).await, 400).await;
        assert_eq!(error["param"], param, "{body}");
    }
    assert_eq!(error_of(put_settings(&app, &token, &json!({"surprise": 1})).await, 400).await["code"], "invalid_json");
    assert_eq!(get_json(&app, &token, "/v1/alerts/settings").await, defaults, "a refused PUT changes nothing");
    let res = app.client.put(app.url("/v1/alerts/settings")).json(&json!({})).send().await.unwrap();
    error_of(res, 401).await;

    let saved = put_settings(&app, &token, &json!({"emails": [OPS], "min_errors": 7, "enabled": false})).await;
    assert_eq!(saved.status(), 200);
    let now = get_json(&app, &token, "/v1/alerts/settings").await;
    assert_eq!((&now["min_errors"], &now["enabled"], &now["emails"]), (&json!(7), &json!(false), &json!([OPS])));
    assert_eq!(now["mail_enabled"], false);
}

#[tokio::test]
async fn events_are_counted_per_bucket_by_class_model_and_instance() {
    let gw = spawn_gateway_with(|e| fast(e, None)).await;
    let (token, _) = key_set(&gw).await;
    burst(&gw, &gw.app, &token, 2).await;
    let sum = |events: &Value, kind: &str, class: &str, model: &str| -> i64 {
        events["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"] == kind && r["class"] == class && r["model"] == model && r["instance"] == "shop-42")
            .map(|r| r["count"].as_i64().unwrap())
            .sum()
    };
    let start = Instant::now();
    let events = loop {
        let events = get_json(&gw.app, &token, "/v1/events").await;
        if sum(&events, "attempt", "transient", "gpt-4o") >= 5
            && sum(&events, "outcome", "fallback_success", "gpt-4o") == 2
        {
            break events;
        }
        assert!(start.elapsed() < 10 * SECOND, "events not counted: {events}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(events["bucket_seconds"], 1);
    assert!(events["data"].as_array().unwrap().iter().any(|r| r["class"] == "success" && r["model"] == "gpt-4o-mini"));
    let future = get_json(&gw.app, &token, "/v1/events?since=2999-01-01T00:00:00Z").await;
    assert_eq!(future["data"], json!([]));
    let res = gw.app.client.get(gw.app.url("/v1/events?since=yesterday")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(error_of(res, 400).await["param"], "since");
}

#[tokio::test]
async fn verification_links_are_single_use_and_expire() {
    let smtp = SmtpServer::start();
    let app = spawn_app_with(|e| fast(e, Some(&smtp.url()))).await;
    let token = token_of(&app.create_key_set(json!([canary_key()])).await);
    let late = "late@example.com";
    assert_eq!(put_settings(&app, &token, &json!({"emails": [OPS, late]})).await.status(), 200);

    let ops_mail = smtp.wait_for(OPS, "Confirm", 10 * SECOND).await;
    assert!(ops_mail["html"].as_str().unwrap().contains("/v1/alerts/verify?token="));
    let ops_token = link_token(&ops_mail);
    let (status, page) = click(&app, &ops_token).await;
    assert_eq!(status, 200);
    assert!(page.contains("Address confirmed"), "{page}");
    let (status, page) = click(&app, &ops_token).await;
    assert_eq!(status, 400, "a link works once");
    assert!(page.contains("already used"), "{page}");

    // A link past its 24 hours is refused.
    let late_token = link_token(&smtp.wait_for(late, "Confirm", 10 * SECOND).await);
    sqlx::query("UPDATE alerts_recipients SET token_expires_at = now() - interval '1 second' WHERE email = $1")
        .bind(late)
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(click(&app, &late_token).await.0, 400);
    assert_eq!(click(&app, "made-up-token").await.0, 400);
    assert_eq!(click(&app, "").await.0, 400);

    // The owner's address: confirming it shows in GET /v1/keys.
    assert_eq!(get_json(&app, &token, "/v1/keys").await["email_verified"], false);
    confirm(&app, &smtp, OWNER).await;
    assert_eq!(get_json(&app, &token, "/v1/keys").await["email_verified"], true);
    let settings = get_json(&app, &token, "/v1/alerts/settings").await;
    assert_eq!(
        settings["recipients"],
        json!([{"email": OWNER, "verified": true, "owner": true}, {"email": OPS, "verified": true, "owner": false},
               {"email": late, "verified": false, "owner": false}])
    );

    // Saving again sends a new link only to the address whose link expired.
    assert_eq!(put_settings(&app, &token, &json!({"emails": [OPS, late]})).await.status(), 200);
    outbox_settled(&app).await;
    assert_eq!(smtp.to(late, "Confirm").len(), 2);
    assert_eq!((smtp.to(OPS, "").len(), smtp.to(OWNER, "").len()), (1, 1), "one link per address");
    let fresh = smtp.to(late, "Confirm").into_iter().map(|m| link_token(&m)).find(|t| *t != late_token).unwrap();
    assert_eq!(click(&app, &fresh).await.0, 200);
}

#[tokio::test]
async fn a_spike_mails_one_digest_to_each_verified_recipient_then_a_resolved_note() {
    let smtp = SmtpServer::start();
    let gw = spawn_gateway_with(|e| fast(e, Some(&smtp.url()))).await;
    let (token, key) = key_set(&gw).await;
    assert_eq!(put_settings(&gw.app, &token, &quick_rules(&[OPS])).await.status(), 200);
    confirm(&gw.app, &smtp, OPS).await;
    smtp.wait_for(OWNER, "Confirm", 10 * SECOND).await; // the owner is asked too, but never confirms

    burst(&gw, &gw.app, &token, 2).await;
    let digest = smtp.wait_for(OPS, "Error spike", 15 * SECOND).await;
    let subject = digest["subject"].as_str().unwrap();
    assert!(
        subject.starts_with("[reliablegpt] Error spike: ") && subject.ends_with(" server errors on gpt-4o in 2 s"),
        "{subject}"
    );
    let masked = get_json(&gw.app, &token, "/v1/keys").await["keys"][0]["masked"].as_str().unwrap().to_owned();
    let text = digest["text"].as_str().unwrap();
    for needle in [
        "shop-42",
        masked.as_str(),
        "gpt-4o",
        "answered after a retry or fallback",
        "https://gateway.example.com/v1/alerts",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from the digest:\n{text}");
    }
    assert!(digest["html"].as_str().unwrap().contains("shop-42"));
    for part in ["text", "html", "raw"] {
        assert_absent(digest[part].as_str().unwrap(), &key, "the digest");
        assert_absent(digest[part].as_str().unwrap(), &token, "the digest");
    }

    let resolved = smtp.wait_for(OPS, "Resolved", 15 * SECOND).await;
    assert!(resolved["text"].as_str().unwrap().contains("back to normal"));
    outbox_settled(&gw.app).await;
    assert_eq!(smtp.to(OPS, "Error spike").len(), 1, "one digest per spike");
    assert!(smtp.to(OWNER, "Error spike").is_empty() && smtp.to(OWNER, "Resolved").is_empty(), "unconfirmed: nothing");

    let list = get_json(&gw.app, &token, "/v1/alerts").await;
    let alerts = list["data"].as_array().unwrap();
    assert_eq!(alerts.len(), 1);
    let alert = &alerts[0];
    assert_eq!((&alert["trigger"], &alert["recipients"]), (&json!("error_spike"), &json!([OPS])));
    assert!(alert["resolved_at"].is_string());
    assert!(alert["summary"]["by_instance"]["shop-42"].as_u64().unwrap() >= 3, "{alert}");
    assert_eq!(alert["summary"]["by_key"][0]["masked"], masked);
    let states: Vec<(&str, &str)> = alert["delivery"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["kind"].as_str().unwrap(), d["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("spike", "sent"), ("resolved", "sent")]);

    // Nothing the alerts module stores holds the key or the token.
    let dump: Vec<String> = sqlx::query_scalar(
        "SELECT t::text FROM alerts_alerts t UNION ALL SELECT t::text FROM alerts_outbox t \
         UNION ALL SELECT t::text FROM alerts_event_counts t UNION ALL SELECT t::text FROM alerts_recipients t",
    )
    .fetch_all(&gw.app.pool)
    .await
    .unwrap();
    let dump = dump.join("\n");
    assert!(dump.contains("shop-42"));
    assert_absent(&dump, &key, "the alerts tables");
    assert_absent(&dump, &token, "the alerts tables");
}

#[tokio::test]
async fn the_cooldown_holds_after_a_spike_resolves() {
    let smtp = SmtpServer::start();
    let gw = spawn_gateway_with(|e| {
        fast(e, Some(&smtp.url()));
        // Every attempt reaches the upstream, so the second burst is as big a spike as the first.
        e.insert(env::BREAKER_FAILURES.to_owned(), "1000".to_owned());
    })
    .await;
    let (token, _) = key_set(&gw).await;
    assert_eq!(put_settings(&gw.app, &token, &quick_rules(&[])).await.status(), 200);
    confirm(&gw.app, &smtp, OWNER).await;
    burst(&gw, &gw.app, &token, 2).await;
    smtp.wait_for(OWNER, "Error spike", 15 * SECOND).await;
    smtp.wait_for(OWNER, "Resolved", 15 * SECOND).await;

    // A second spike inside the cooldown: counted, but no alert and no mail.
    burst(&gw, &gw.app, &token, 2).await;
    tokio::time::sleep(2 * SECOND).await; // about a dozen evaluations with the spike in the window
    let transient: i64 = get_json(&gw.app, &token, "/v1/events").await["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["class"] == "transient")
        .map(|r| r["count"].as_i64().unwrap())
        .sum();
    assert_eq!(transient, 12, "both spikes counted (2 x 2 requests x 3 attempts)");
    outbox_settled(&gw.app).await;
    assert_eq!(smtp.to(OWNER, "Error spike").len(), 1);
    assert_eq!(get_json(&gw.app, &token, "/v1/alerts").await["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn mail_queued_while_smtp_is_down_arrives_after_it_returns() {
    let port = free_port();
    let app = spawn_app_with(|e| fast(e, Some(&format!("smtp://127.0.0.1:{port}")))).await;
    let token = token_of(&app.create_key_set(json!([canary_key()])).await);
    assert_eq!(put_settings(&app, &token, &json!({})).await.status(), 200, "the API does not wait for SMTP");
    wait_until("failed sends", 10 * SECOND, || async {
        let attempts: Option<i32> =
            sqlx::query_scalar("SELECT attempts FROM alerts_outbox WHERE state = 'pending' AND last_error IS NOT NULL")
                .fetch_optional(&app.pool)
                .await
                .unwrap();
        attempts.is_some_and(|a| a >= 2)
    })
    .await;
    // What waits in the outbox is sealed: neither the subject nor the link's token is readable in the database.
    let waiting: Vec<String> =
        sqlx::query_scalar("SELECT t::text FROM alerts_outbox t").fetch_all(&app.pool).await.unwrap();
    assert_eq!(waiting.len(), 1);

    let smtp = SmtpServer::start_on(port);
    let mail = smtp.wait_for(OWNER, "Confirm", 15 * SECOND).await;
    outbox_settled(&app).await;
    assert_eq!(smtp.messages().len(), 1);
    let link = link_token(&mail);
    for secret in [link.as_str(), "Confirm"] {
        crate::helpers::assert_absent(&waiting[0], secret, "a pending outbox row");
    }
    assert_eq!(click(&app, &link).await.0, 200);
}

#[tokio::test]
async fn two_replicas_send_each_email_once() {
    let smtp = SmtpServer::start();
    let gw = spawn_gateway_with(|e| fast(e, Some(&smtp.url()))).await;
    let sibling = gw.app.sibling(|_| {}).await;
    let (token, _) = key_set(&gw).await;
    assert_eq!(put_settings(&sibling, &token, &quick_rules(&[OPS])).await.status(), 200);
    confirm(&gw.app, &smtp, OPS).await;
    // Both replicas count events, evaluate rules and poll the outbox.
    burst(&gw, &gw.app, &token, 1).await;
    burst(&gw, &sibling, &token, 1).await;
    smtp.wait_for(OPS, "Error spike", 15 * SECOND).await;
    smtp.wait_for(OPS, "Resolved", 15 * SECOND).await;
    outbox_settled(&gw.app).await;
    tokio::time::sleep(SECOND / 2).await;
    for (subject, to) in [("Confirm", OPS), ("Confirm", OWNER), ("Error spike", OPS), ("Resolved", OPS)] {
        assert_eq!(smtp.to(to, subject).len(), 1, "{subject} to {to}");
    }
    assert_eq!(smtp.messages().len(), 4);
    assert_eq!(get_json(&sibling, &token, "/v1/alerts").await["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_per_address_cap_holds_across_key_sets() {
    let smtp = SmtpServer::start();
    let app = spawn_app_with(|e| {
        fast(e, Some(&smtp.url()));
        e.insert(env::ALERT_MAX_EMAILS_PER_HOUR.to_owned(), "2".to_owned());
    })
    .await;
    let victim = "Victim@Example.com";
    for _ in 0..3 {
        let token = token_of(&app.create_key_set(json!([canary_key()])).await);
        assert_eq!(put_settings(&app, &token, &json!({"emails": [victim]})).await.status(), 200);
    }
    outbox_settled(&app).await;
    assert_eq!(smtp.to(victim, "").len(), 2, "at most 2 emails an hour to one address, across key sets");
    assert_eq!(smtp.to(OWNER, "").len(), 2);
    let capped: i64 = sqlx::query_scalar("SELECT count(*) FROM alerts_outbox WHERE state = 'capped'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(capped, 2);
}

#[tokio::test]
async fn without_smtp_alerts_are_recorded_but_not_mailed() {
    let gw = spawn_gateway_with(|e| fast(e, None)).await;
    let ready: Value = gw.app.client.get(gw.app.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert!(ready["alert_email"].as_str().unwrap().starts_with("disabled"), "{ready}");
    let token = gw.key_set(&[&canary_key()], &[]).await;
    let rules = json!({"min_errors": 50, "window_seconds": 2, "alert_on_total_failure": true});
    assert_eq!(put_settings(&gw.app, &token, &rules).await.status(), 200);
    gw.mock.script("gpt-4o", vec![Behavior::server_error()]);
    assert!(gw.chat(&token, "gpt-4o").await.status >= 500, "nothing served");
    let start = Instant::now();
    let list = loop {
        let list = get_json(&gw.app, &token, "/v1/alerts").await;
        if !list["data"].as_array().unwrap().is_empty() {
            break list;
        }
        assert!(start.elapsed() < 10 * SECOND, "no alert recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let alert = &list["data"][0];
    assert_eq!(list["mail_enabled"], false);
    assert_eq!(alert["trigger"], "total_failure");
    assert_eq!(alert["summary"]["failed_requests"], 1);
    assert_eq!((&alert["recipients"], &alert["delivery"]), (&json!([]), &json!([])));
    assert_eq!(gw.app.count("alerts_outbox").await, 0);
}

/// The real binary at TRACE level through a whole alert cycle (settings, verification, spike, digest): nothing it prints
/// holds a provider key, the special token or a verification link's token.
#[tokio::test]
async fn trace_logs_of_the_alert_flows_hold_no_key_token_or_link() {
    let smtp = SmtpServer::start();
    let db = crate::helpers::TestDatabase::create().await;
    reliablegpt::db::migrate(&db.pool().await).await.unwrap();
    let mock = reliablegpt::mock_upstream::MockUpstream::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut vars = crate::helpers::base_env(&db);
    fast(&mut vars, Some(&smtp.url()));
    vars.insert(env::OPENAI_BASE_URL.into(), mock.base_url());
    vars.insert(env::ALLOW_PRIVATE_UPSTREAMS.into(), "true".into());
    vars.insert(env::ALLOWED_UPSTREAM_HOSTS.into(), "127.0.0.1".into());
    let service = crate::helpers::RunningService::start(&vars, "trace");
    let base = service.base.clone();
    let client = reqwest::Client::new();
    let key = canary_key();
    let created = service
        .post_keys(&json!({"user_email": OWNER, "keys": [key], "policy": {"fallback_strategy": ["gpt-4o-mini"]}}))
        .await;
    let token = token_of(&created);
    let res = client
        .put(format!("{base}/v1/alerts/settings"))
        .bearer_auth(&token)
        .json(&quick_rules(&[OPS]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let link = link_token(&smtp.wait_for(OPS, "Confirm", 10 * SECOND).await);
    let res = client.get(format!("{base}/v1/alerts/verify?token={link}")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    mock.script("gpt-4o", vec![Behavior::server_error()]);
    for _ in 0..2 {
        let res = client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&token)
            .header("x-reliablegpt-instance", "shop-42")
            .json(&chat_body("gpt-4o"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "the fallback answers");
    }
    let digest = smtp.wait_for(OPS, "Error spike", 15 * SECOND).await;
    assert!(digest["text"].as_str().unwrap().contains("shop-42"), "{digest}");
    let logs = service.stop();
    assert!(logs.contains("alert opened") && logs.contains("alert email sent"), "the flows were not logged");
    assert!(logs.contains("\"level\":\"TRACE\"") || logs.contains("\"level\":\"DEBUG\""), "not a TRACE capture");
    for secret in [&key, &token, &link] {
        assert_absent(&logs, secret, "service logs");
    }
}

#[tokio::test]
async fn the_owner_gets_a_link_when_the_key_set_is_created_and_alerts_need_no_settings_call() {
    let smtp = SmtpServer::start();
    let gw = spawn_gateway_with(|e| fast(e, Some(&smtp.url()))).await;
    let (token, _) = key_set(&gw).await;
    let mail = smtp.wait_for(OWNER, "Confirm", 10 * SECOND).await;
    assert_eq!(click(&gw.app, &link_token(&mail)).await.0, 200);
    let keys: Value = gw.app.get_keys(&token).await.json().await.unwrap();
    assert_eq!(keys["email_verified"], true);
    // Changing the address sends the new one a link; the old one is not asked again.
    let res = gw.app.patch_keys(&token, &json!({"user_email": "new-owner@example.com"})).await;
    assert_eq!(res.status(), 200);
    smtp.wait_for("new-owner@example.com", "Confirm", 10 * SECOND).await;
    assert_eq!(smtp.to(OWNER, "Confirm").len(), 1);
}

#[tokio::test]
async fn only_key_sets_with_failures_or_an_open_alert_are_evaluated() {
    let db = crate::helpers::TestDatabase::create().await;
    reliablegpt::db::migrate(&db.pool().await).await.unwrap();
    let mock = reliablegpt::mock_upstream::MockUpstream::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut vars = crate::helpers::base_env(&db);
    fast(&mut vars, None);
    vars.insert(env::OPENAI_BASE_URL.into(), mock.base_url());
    vars.insert(env::ALLOW_PRIVATE_UPSTREAMS.into(), "true".into());
    vars.insert(env::ALLOWED_UPSTREAM_HOSTS.into(), "127.0.0.1".into());
    let service = crate::helpers::RunningService::start(&vars, "reliablegpt::alerts=trace,info");
    let client = reqwest::Client::new();
    let create =
        |model: &str| json!({"user_email": OWNER, "keys": [canary_key()], "policy": {"fallback_strategy": [model]}});
    let healthy = service.post_keys(&create("gpt-4o-mini")).await;
    let failing = service.post_keys(&create("gpt-4o-mini")).await;
    mock.script("gpt-4o", vec![Behavior::server_error()]);
    for (created, model) in [(&healthy, "gpt-4o-mini"), (&failing, "gpt-4o")] {
        let res = client
            .post(format!("{}/v1/chat/completions", service.base))
            .bearer_auth(token_of(created))
            .json(&chat_body(model))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "answered (the failing one by its fallback)");
    }
    // Counts flush every 100 ms and rules run every 150 ms: a second is several evaluations of both.
    tokio::time::sleep(SECOND).await;
    let logs = service.stop();
    let evaluated = |created: &Value| {
        let id = created["key_set_id"].as_str().unwrap();
        logs.lines().filter(|l| l.contains("evaluating alert rules") && l.contains(id)).count()
    };
    assert!(evaluated(&failing) >= 2, "the key set with failed attempts was not evaluated");
    assert_eq!(evaluated(&healthy), 0, "a key set with only successes was evaluated");
}
