//! Where upstream requests may go. The rules live in [`crate::egress`]; these are the operator's two settings for them.

use super::{Group, Source, parse, settings};
use crate::egress::{EgressPolicy, HostPattern};

pub const DEFAULT_ALLOWED_UPSTREAM_HOSTS: &str =
    "api.openai.com,*.openai.azure.com,api.anthropic.com,generativelanguage.googleapis.com";

settings! {
    struct EgressSettings {
        allowed_upstream_hosts: Vec<HostPattern> [
            ALLOWED_UPSTREAM_HOSTS = "RELIABLEGPT_ALLOWED_UPSTREAM_HOSTS", parse::host_patterns, default default_hosts()
        ],
        allow_private_upstreams: bool [
            ALLOW_PRIVATE_UPSTREAMS = "RELIABLEGPT_ALLOW_PRIVATE_UPSTREAMS", parse::flag, default false
        ],
    }
}

fn default_hosts() -> Vec<HostPattern> {
    // The default is checked by a unit test; a pattern that failed to parse would only narrow the allowlist.
    parse::host_patterns("", DEFAULT_ALLOWED_UPSTREAM_HOSTS).unwrap_or_default()
}

/// `Settings` holds the policy itself, read through these settings.
impl Group for EgressPolicy {
    fn names(out: &mut Vec<&'static str>) {
        EgressSettings::names(out);
    }

    fn load(source: &Source<'_>) -> Result<Self, super::ConfigError> {
        let s = EgressSettings::load(source)?;
        Ok(Self::new(s.allowed_upstream_hosts, s.allow_private_upstreams))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_host_pattern_parses() {
        assert_eq!(default_hosts().len(), DEFAULT_ALLOWED_UPSTREAM_HOSTS.split(',').count());
    }
}
