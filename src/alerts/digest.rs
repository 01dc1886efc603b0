//! What the emails say: the alert digest (what happened, where, what reliablegpt did), the "resolved" note and the
//! verification link. Every email has a plain-text and an HTML body. Keys appear only masked; the link to the alert
//! list carries no token.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::queries::WindowRow;
use super::rules::{FAILURE_CLASSES, OVERLOAD_CLASS, OVERLOAD_OUTCOME, Trigger};

/// A provider key's failures, shown masked.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyFailures {
    #[schema(example = "sk-...abcd")]
    pub masked: String,
    pub provider: String,
    pub failures: u64,
}

/// What an alert's digest reports, as stored with the alert.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Summary {
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub window_seconds: u32,
    /// Failed upstream attempts (and overload 503s) in the window.
    pub failures: u64,
    pub failures_per_minute: f64,
    /// The key set's usual failures per minute before the window.
    pub baseline_per_minute: f64,
    pub spike_factor: f64,
    /// Requests that failed with nothing served.
    pub failed_requests: u64,
    pub by_class: BTreeMap<String, u64>,
    pub by_model: BTreeMap<String, u64>,
    /// Customer instances whose requests saw failures.
    pub by_instance: BTreeMap<String, u64>,
    pub by_key: Vec<KeyFailures>,
    /// What reliablegpt did: requests by outcome (success, fallback_success, rescued, cached, graceful, shed, failed, ...).
    pub outcomes: BTreeMap<String, u64>,
    /// Upstream calls made for those requests (retries, fallbacks and hedges included).
    pub attempts: u64,
}

/// `masked` maps key ids to `(provider, masked key)`.
pub fn summarise(
    rows: &[WindowRow],
    masked: &HashMap<Uuid, (String, String)>,
    window: (DateTime<Utc>, DateTime<Utc>, u32),
    baseline_per_minute: f64,
    spike_factor: f64,
) -> Summary {
    let mut s = Summary {
        window_start: window.0,
        window_end: window.1,
        window_seconds: window.2,
        failures: 0,
        failures_per_minute: 0.0,
        baseline_per_minute,
        spike_factor,
        failed_requests: 0,
        by_class: BTreeMap::new(),
        by_model: BTreeMap::new(),
        by_instance: BTreeMap::new(),
        by_key: Vec::new(),
        outcomes: BTreeMap::new(),
        attempts: 0,
    };
    let mut by_key: BTreeMap<Uuid, u64> = BTreeMap::new();
    for row in rows {
        let n = u64::try_from(row.count).unwrap_or(0);
        let failure_class = match row.kind.as_str() {
            "attempt" => {
                s.attempts += n;
                FAILURE_CLASSES.contains(&row.class.as_str()).then_some(row.class.as_str())
            }
            _ => {
                *s.outcomes.entry(row.class.clone()).or_default() += n;
                if row.class == super::rules::TOTAL_FAILURE_OUTCOME {
                    s.failed_requests += n;
                }
                (row.class == OVERLOAD_OUTCOME).then_some(OVERLOAD_CLASS)
            }
        };
        let Some(class) = failure_class else { continue };
        s.failures += n;
        *s.by_class.entry(class.to_owned()).or_default() += n;
        *s.by_model.entry(row.model.clone()).or_default() += n;
        *s.by_instance.entry(row.instance.clone()).or_default() += n;
        if row.kind == "attempt" {
            *by_key.entry(row.key_id).or_default() += n;
        }
    }
    s.by_key = by_key
        .into_iter()
        .map(|(id, failures)| {
            let (provider, masked) = masked.get(&id).cloned().unwrap_or_else(|| ("?".into(), "(removed key)".into()));
            KeyFailures { masked, provider, failures }
        })
        .collect();
    s.by_key.sort_by_key(|k| std::cmp::Reverse(k.failures));
    s.failures_per_minute = s.failures as f64 * 60.0 / f64::from(window.2.max(1));
    s
}

/// One email, both bodies.
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

fn class_label(class: &str) -> &str {
    match class {
        "rate_limited" => "rate-limit",
        "transient" => "server",
        "credential" => "credential",
        "timeout" => "timeout",
        "model_not_found" => "model-not-found",
        "breaker_open" => "breaker-open",
        OVERLOAD_CLASS => "overload",
        other => other,
    }
}

fn outcome_label(outcome: &str) -> &str {
    match outcome {
        "success" => "answered first try",
        "fallback_success" => "answered after a retry or fallback",
        "rescued" => "stream rescued on another model",
        "cached" => "answered from the cache",
        "graceful" => "answered with your graceful string",
        "shed" => "shed (503 overloaded)",
        "failed" => "failed with nothing served",
        "partial" => "stream cut short",
        "caller_error" => "refused as the caller's error",
        "cancelled" => "cancelled by the client",
        other => other,
    }
}

/// "5 min" or "30 s".
pub fn span(seconds: u32) -> String {
    if seconds >= 60 && seconds.is_multiple_of(60) { format!("{} min", seconds / 60) } else { format!("{seconds} s") }
}

fn top(counts: &BTreeMap<String, u64>) -> Option<(&str, u64)> {
    counts.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))).map(|(k, v)| (k.as_str(), *v))
}

fn list(counts: &BTreeMap<String, u64>) -> String {
    let mut items: Vec<(&String, &u64)> = counts.iter().collect();
    items.sort_by(|a, b| b.1.cmp(a.1));
    let shown: Vec<String> = items.iter().take(10).map(|(k, v)| format!("{k} {v}")).collect();
    let more = items.len().saturating_sub(10);
    if more > 0 { format!("{} and {more} more", shown.join(", ")) } else { shown.join(", ") }
}

pub fn subject(trigger: Trigger, s: &Summary) -> String {
    let window = span(s.window_seconds);
    match trigger {
        Trigger::TotalFailure => format!(
            "[reliablegpt] Total failure: {} request{} failed with nothing served in {window}",
            s.failed_requests,
            if s.failed_requests == 1 { "" } else { "s" }
        ),
        Trigger::ErrorSpike => {
            let (class, n) = top(&s.by_class).unwrap_or(("", s.failures));
            let model = top(&s.by_model).map(|(m, _)| format!(" on {m}")).unwrap_or_default();
            format!("[reliablegpt] Error spike: {n} {} errors{model} in {window}", class_label(class))
        }
    }
}

/// The digest sent when an alert opens.
pub fn digest(trigger: Trigger, key_set_id: Uuid, s: &Summary, alerts_url: &str) -> Rendered {
    let subject = subject(trigger, s);
    let when = format!("{} to {} UTC", s.window_start.format("%Y-%m-%d %H:%M:%S"), s.window_end.format("%H:%M:%S"));
    let headline = match trigger {
        Trigger::ErrorSpike => "Error spike",
        Trigger::TotalFailure => "Requests failed with nothing served",
    };
    let keys: Vec<String> = s.by_key.iter().map(|k| format!("{} ({}) {}", k.masked, k.provider, k.failures)).collect();
    let requests: u64 = s.outcomes.values().sum();
    let mut outcomes: Vec<(&String, &u64)> = s.outcomes.iter().filter(|(_, n)| **n > 0).collect();
    outcomes.sort_by_key(|(_, n)| std::cmp::Reverse(**n));
    let did: Vec<String> = outcomes.iter().map(|(o, n)| format!("{n} {}", outcome_label(o))).collect();
    let lines: Vec<(&str, String)> = vec![
        (
            "What happened",
            format!(
                "{} failures in the {} from {when} ({:.1}/min; usual {:.1}/min; alert threshold {}x). {} request(s) failed with nothing served.",
                s.failures,
                span(s.window_seconds),
                s.failures_per_minute,
                s.baseline_per_minute,
                s.spike_factor,
                s.failed_requests
            ),
        ),
        ("By class", list(&s.by_class.iter().map(|(k, v)| (class_label(k).to_owned(), *v)).collect())),
        ("Models", list(&s.by_model)),
        ("Keys", if keys.is_empty() { "-".into() } else { keys.join(", ") }),
        ("Customer instances", list(&s.by_instance)),
        (
            "What reliablegpt did",
            format!(
                "{requests} requests, {} upstream attempts: {}.",
                s.attempts,
                if did.is_empty() { "-".into() } else { did.join(", ") }
            ),
        ),
    ];
    let footer = format!(
        "Recent alerts: {alerts_url} (send your key set's token as Authorization: Bearer). Change thresholds or \
         recipients with PUT /v1/alerts/settings. No further email about this spike until it resolves."
    );
    let mut text = format!("{headline} on reliablegpt key set {key_set_id}\n\n");
    let mut html = format!("<h2>{}</h2>\n<p>Key set <code>{key_set_id}</code></p>\n<dl>\n", escape(headline));
    for (label, value) in &lines {
        text.push_str(&format!("{label}: {}\n", if value.is_empty() { "-" } else { value }));
        html.push_str(&format!("<dt><b>{}</b></dt><dd>{}</dd>\n", escape(label), escape(value)));
    }
    text.push_str(&format!("\n{footer}\n"));
    html.push_str(&format!("</dl>\n<p>{}</p>\n", link_html(&footer, alerts_url)));
    Rendered { subject, text, html }
}

pub fn resolved(
    trigger: Trigger,
    key_set_id: Uuid,
    opened_at: DateTime<Utc>,
    at: DateTime<Utc>,
    alerts_url: &str,
) -> Rendered {
    let what = match trigger {
        Trigger::ErrorSpike => "error spike",
        Trigger::TotalFailure => "total failure",
    };
    let minutes = (at - opened_at).num_minutes();
    let subject = format!("[reliablegpt] Resolved: {what} on key set {}", short(key_set_id));
    let body = format!(
        "The {what} on reliablegpt key set {key_set_id} that opened at {} UTC is over: failures have been back to normal \
         for a whole window (resolved at {} UTC, after {minutes} min). Recent alerts: {alerts_url}",
        opened_at.format("%Y-%m-%d %H:%M:%S"),
        at.format("%H:%M:%S"),
    );
    Rendered { html: format!("<p>{}</p>\n", link_html(&body, alerts_url)), text: format!("{body}\n"), subject }
}

pub fn verification(key_set_id: Uuid, link: &str) -> Rendered {
    let subject = "[reliablegpt] Confirm this address for error alerts".to_owned();
    let intro = format!(
        "Someone asked reliablegpt to send error alerts for key set {key_set_id} to this address. If that was you, \
         confirm it by opening this link (valid for 24 hours, once):"
    );
    let outro = "If it was not you, ignore this email: nothing else will be sent to you for this key set.";
    Rendered {
        subject,
        text: format!("{intro}\n\n{link}\n\n{outro}\n"),
        html: format!(
            "<p>{}</p>\n<p><a href=\"{}\">Confirm this address</a></p>\n<p>{}</p>\n",
            escape(&intro),
            escape(link),
            escape(outro)
        ),
    }
}

fn short(id: Uuid) -> String {
    id.simple().to_string().chars().take(8).collect()
}

/// HTML-escapes `text` and turns the one URL in it into a link.
fn link_html(text: &str, url: &str) -> String {
    escape(text).replacen(&escape(url), &format!("<a href=\"{0}\">{0}</a>", escape(url)), 1)
}

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, class: &str, model: &str, instance: &str, key_id: Uuid, count: i64) -> WindowRow {
        WindowRow {
            kind: kind.into(),
            class: class.into(),
            model: model.into(),
            provider: "openai".into(),
            instance: instance.into(),
            key_id,
            count,
        }
    }

    #[test]
    fn the_digest_names_classes_models_instances_and_masked_keys() {
        let key = Uuid::new_v4();
        let rows = vec![
            row("attempt", "rate_limited", "gpt-4o", "shop-1", key, 40),
            row("attempt", "transient", "gpt-4o-mini", "shop-2", key, 2),
            row("attempt", "success", "gpt-4o-mini", "shop-2", key, 30),
            row("attempt", "caller_fault", "gpt-4o", "shop-2", key, 9),
            row("outcome", "fallback_success", "gpt-4o", "shop-1", Uuid::nil(), 30),
            row("outcome", "failed", "gpt-4o", "shop-1", Uuid::nil(), 2),
        ];
        let masked = HashMap::from([(key, ("openai".to_owned(), "sk-...abcd".to_owned()))]);
        let now = Utc::now();
        let s = summarise(&rows, &masked, (now - chrono::Duration::minutes(5), now, 300), 0.5, 3.0);
        assert_eq!(s.failures, 42);
        assert_eq!(s.failed_requests, 2);
        assert_eq!(s.attempts, 81);
        let d = digest(Trigger::ErrorSpike, Uuid::nil(), &s, "https://gw.example.com/v1/alerts");
        assert_eq!(d.subject, "[reliablegpt] Error spike: 40 rate-limit errors on gpt-4o in 5 min");
        for needle in
            ["shop-1 40", "shop-2 2", "sk-...abcd (openai) 42", "answered after a retry or fallback", "2 failed"]
        {
            assert!(d.text.contains(needle), "{needle} missing from {}", d.text);
        }
        assert!(d.html.contains("<a href=\"https://gw.example.com/v1/alerts\">"), "{}", d.html);
        assert_eq!(
            subject(Trigger::TotalFailure, &s),
            "[reliablegpt] Total failure: 2 requests failed with nothing served in 5 min"
        );
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(escape("<b>&\"'"), "&lt;b&gt;&amp;&quot;&#39;");
        let v = verification(Uuid::nil(), "https://x/v1/alerts/verify?token=a&b");
        assert!(v.html.contains("token=a&amp;b"), "{}", v.html);
        assert!(v.text.contains("token=a&b"));
    }
}
