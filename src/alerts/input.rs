//! `PUT /v1/alerts/settings`: the wire type, parsed once into [`Thresholds`] and a list of addresses.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::vault::input::{EmailAddress, Invalid, invalid};

/// At most this many extra recipients per key set.
pub const MAX_RECIPIENTS: usize = 10;
const MAX_WINDOW_SECONDS: i64 = 86_400;
const MAX_COOLDOWN_SECONDS: i64 = 7 * 86_400;
const MAX_MIN_ERRORS: i64 = 1_000_000;
const MAX_SPIKE_FACTOR: f64 = 1_000.0;

/// Body of `PUT /v1/alerts/settings`. Omitted fields take their defaults.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertSettingsRequest {
    /// Extra recipients; the key set's `user_email` always receives alerts too. Each address must confirm a
    /// verification link before it receives anything.
    #[serde(default)]
    #[schema(example = json!(["ops@example.com"]))]
    pub emails: Vec<String>,
    pub enabled: Option<bool>,
    /// Failures needed in the window before a spike can open.
    #[schema(example = 5)]
    pub min_errors: Option<i64>,
    /// The window failures are counted over (rounded up to whole minutes).
    #[schema(example = 300)]
    pub window_seconds: Option<i64>,
    /// How many times the key set's own baseline rate the window's rate must reach.
    #[schema(example = 3.0)]
    pub spike_factor: Option<f64>,
    /// Quiet time after an alert's digest before another spike may alert.
    #[schema(example = 900)]
    pub cooldown_seconds: Option<i64>,
    /// Also alert when requests failed with nothing served (no upstream, no cache, no graceful answer).
    pub alert_on_total_failure: Option<bool>,
}

/// A key set's thresholds, valid by construction.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Thresholds {
    pub enabled: bool,
    pub min_errors: u32,
    pub window_seconds: u32,
    pub spike_factor: f64,
    pub cooldown_seconds: u32,
    pub alert_on_total_failure: bool,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            enabled: true,
            min_errors: 5,
            window_seconds: 300,
            spike_factor: 3.0,
            cooldown_seconds: 900,
            alert_on_total_failure: true,
        }
    }
}

/// A parsed `PUT /v1/alerts/settings`.
#[derive(Debug, Clone)]
pub struct NewAlertSettings {
    pub thresholds: Thresholds,
    pub emails: Vec<EmailAddress>,
}

fn whole(param: &str, value: Option<i64>, min: i64, max: i64, default: u32) -> Result<u32, Invalid> {
    match value {
        None => Ok(default),
        Some(v) if (min..=max).contains(&v) => u32::try_from(v).map_err(|_| invalid(param, "is out of range")),
        Some(_) => Err(invalid(param, format!("must be a whole number between {min} and {max}"))),
    }
}

impl NewAlertSettings {
    pub fn parse(req: AlertSettingsRequest) -> Result<Self, Invalid> {
        let d = Thresholds::default();
        if req.emails.len() > MAX_RECIPIENTS {
            return Err(invalid("emails", format!("at most {MAX_RECIPIENTS} addresses")));
        }
        let mut emails: Vec<EmailAddress> = Vec::with_capacity(req.emails.len());
        for (i, text) in req.emails.iter().enumerate() {
            let email = EmailAddress::parse(&format!("emails[{i}]"), text)?;
            if !emails.iter().any(|e| e.as_str().eq_ignore_ascii_case(email.as_str())) {
                emails.push(email);
            }
        }
        let spike_factor = match req.spike_factor {
            None => d.spike_factor,
            Some(f) if f.is_finite() && (1.0..=MAX_SPIKE_FACTOR).contains(&f) => f,
            Some(_) => {
                return Err(invalid("spike_factor", format!("must be a number between 1 and {MAX_SPIKE_FACTOR}")));
            }
        };
        let thresholds = Thresholds {
            enabled: req.enabled.unwrap_or(d.enabled),
            min_errors: whole("min_errors", req.min_errors, 1, MAX_MIN_ERRORS, d.min_errors)?,
            window_seconds: whole("window_seconds", req.window_seconds, 1, MAX_WINDOW_SECONDS, d.window_seconds)?,
            spike_factor,
            cooldown_seconds: whole(
                "cooldown_seconds",
                req.cooldown_seconds,
                0,
                MAX_COOLDOWN_SECONDS,
                d.cooldown_seconds,
            )?,
            alert_on_total_failure: req.alert_on_total_failure.unwrap_or(d.alert_on_total_failure),
        };
        Ok(Self { thresholds, emails })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: serde_json::Value) -> Result<NewAlertSettings, Invalid> {
        NewAlertSettings::parse(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn omitted_fields_take_the_defaults_and_duplicates_collapse() {
        let s = parse(json!({"emails": ["Ops@Example.com", "ops@example.COM", "b@example.org"]})).unwrap();
        assert_eq!(s.thresholds, Thresholds::default());
        let emails: Vec<&str> = s.emails.iter().map(|e| e.as_str()).collect();
        assert_eq!(emails, ["Ops@example.com", "b@example.org"]);
    }

    #[test]
    fn each_bad_field_is_named() {
        for (body, param) in [
            (json!({"emails": ["not-an-address"]}), "emails[0]"),
            (json!({"emails": ["a@b.co", "x@@y"]}), "emails[1]"),
            (json!({"min_errors": -1}), "min_errors"),
            (json!({"min_errors": 0}), "min_errors"),
            (json!({"window_seconds": -300}), "window_seconds"),
            (json!({"window_seconds": 100_000}), "window_seconds"),
            (json!({"cooldown_seconds": -1}), "cooldown_seconds"),
            (json!({"spike_factor": 0.5}), "spike_factor"),
            (json!({"spike_factor": -3.0}), "spike_factor"),
        ] {
            assert_eq!(parse(body.clone()).unwrap_err().param, param, "{body}");
        }
        let many: Vec<String> = (0..11).map(|i| format!("a{i}@example.com")).collect();
        assert_eq!(parse(json!({ "emails": many })).unwrap_err().param, "emails");
    }
}
