//! Hit guards (stub until the real guards land from the cache-guard branch).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Which guards run on a candidate hit (policy `cache_guards`); all on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Guards {
    pub numbers: bool,
    pub negation: bool,
    pub entities: bool,
    pub scope: bool,
}

impl Default for Guards {
    fn default() -> Self {
        Self { numbers: true, negation: true, entities: true, scope: true }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Numbers,
    Negation,
    Entities,
    Scope,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Numbers => "numbers",
            Self::Negation => "negation",
            Self::Entities => "entities",
            Self::Scope => "scope",
        }
    }
}

pub fn check(_query: &str, _candidate: &str, _guards: Guards) -> Result<(), Rejection> {
    Ok(())
}
