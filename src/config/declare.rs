//! How a module declares its settings: each one once, with its environment variable, type, parsing rule and default.
//! The TOML key, the list of known names, the `env` constants and `Default` all derive from that one declaration.

use std::collections::HashMap;

use super::ConfigError;

/// A settings struct made by [`settings!`](crate::config::settings): it knows its variables and how to read them.
pub trait Group: Sized {
    /// Appends the environment variable of every setting, nested groups' included, in declaration order.
    fn names(out: &mut Vec<&'static str>);

    /// Reads every setting from `source`; the first missing or malformed one stops it.
    fn load(source: &Source<'_>) -> Result<Self, ConfigError>;
}

/// Every environment variable of a group, in declaration order.
pub fn names<G: Group>() -> Vec<&'static str> {
    let mut out = Vec::new();
    G::names(&mut out);
    out
}

/// Where values come from: the environment, then the TOML file (key = variable name in lower case without the
/// `RELIABLEGPT_` prefix).
pub struct Source<'a> {
    file: HashMap<String, String>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Source<'a> {
    pub fn new(file: HashMap<String, String>, env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self { file, env }
    }

    pub fn get(&self, name: &str) -> Option<String> {
        (self.env)(name).or_else(|| self.file.get(&file_key(name)).cloned())
    }
}

/// The TOML key of a variable: `RELIABLEGPT_MASTER_KEY` → `master_key`, `DATABASE_URL` → `database_url`.
pub fn file_key(env_name: &str) -> String {
    env_name.trim_start_matches("RELIABLEGPT_").to_ascii_lowercase()
}

#[doc(hidden)]
pub fn required<T>(
    source: &Source<'_>,
    name: &'static str,
    rule: impl Fn(&'static str, &str) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    match source.get(name) {
        None => Err(ConfigError::Missing(name)),
        Some(text) => rule(name, &text),
    }
}

/// A secret's text from the variable `name` or from the file named by `file_name` (the Docker/Kubernetes secrets
/// convention); setting both is an error. A file's trailing line break is dropped; errors name the path, never the
/// content.
pub fn secret_text(
    source: &Source<'_>,
    name: &'static str,
    file_name: &'static str,
) -> Result<Option<zeroize::Zeroizing<String>>, ConfigError> {
    match (source.get(name), source.get(file_name)) {
        (Some(_), Some(_)) => {
            Err(ConfigError::Malformed { name, reason: format!("set either {name} or {file_name}, not both") })
        }
        (Some(text), None) => Ok(Some(zeroize::Zeroizing::new(text))),
        (None, Some(path)) => {
            let mut text = zeroize::Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
                path: format!("{path} ({file_name})"),
                reason: e.kind().to_string(),
            })?);
            while text.ends_with(['\n', '\r']) {
                text.pop();
            }
            Ok(Some(text))
        }
        (None, None) => Ok(None),
    }
}

#[doc(hidden)]
pub fn required_secret<T>(
    source: &Source<'_>,
    name: &'static str,
    file_name: &'static str,
    rule: impl Fn(&'static str, &str) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    match secret_text(source, name, file_name)? {
        None => Err(ConfigError::Missing(name)),
        Some(text) => rule(name, &text),
    }
}

#[doc(hidden)]
pub fn optional_secret<T>(
    source: &Source<'_>,
    name: &'static str,
    file_name: &'static str,
    rule: impl Fn(&'static str, &str) -> Result<T, ConfigError>,
) -> Result<Option<T>, ConfigError> {
    secret_text(source, name, file_name)?.map(|text| rule(name, &text)).transpose()
}

#[doc(hidden)]
pub fn optional<T>(
    source: &Source<'_>,
    name: &'static str,
    rule: impl Fn(&'static str, &str) -> Result<T, ConfigError>,
) -> Result<Option<T>, ConfigError> {
    source.get(name).map(|text| rule(name, &text)).transpose()
}

#[doc(hidden)]
pub fn or_default<T>(
    source: &Source<'_>,
    name: &'static str,
    rule: impl Fn(&'static str, &str) -> Result<T, ConfigError>,
    default: T,
) -> Result<T, ConfigError> {
    match source.get(name) {
        None => Ok(default),
        Some(text) => rule(name, &text),
    }
}

/// Declares a settings struct; one line per setting. A field is either a setting
///
/// `pub field: Type [CONST = "ENV_NAME", rule, required | optional | default EXPR]`
///
/// (`rule` is one of [`parse`](crate::config::parse)'s; `optional` fields are `Option<Type>`), or a secret that may
/// also come from a file (`ENV_NAME_FILE` holds its path)
///
/// `pub field: Type [CONST = "ENV_NAME" or file FILE_CONST = "ENV_NAME_FILE", rule, required | optional]`
///
/// or a nested group
///
/// `pub field: Type [group crate::path::to::its::module]` (the module holding `Type`'s `env`).
///
/// It generates the struct, its [`Group`] impl, `Default` when the struct is written `struct Name: Default` (every
/// setting then needs a default), and `pub mod env` beside it: a constant per variable plus nested groups' constants.
/// Hence one group per module.
///
/// ```ignore
/// settings! {
///     #[derive(Debug, Clone)]
///     pub struct AbuseLimits: Default {
///         /// `POST /v1/keys` per client IP per minute.
///         pub key_sets_per_minute: u32
///             [KEY_SETS_PER_MINUTE = "RELIABLEGPT_KEY_SETS_PER_MINUTE", parse::positive, default 20],
///     }
/// }
/// ```
macro_rules! settings {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident: Default {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident: $ty:ty [ $($spec:tt)* ] ),* $(,)?
        }
    ) => {
        $crate::config::settings! {
            $(#[$meta])*
            $vis struct $name { $( $(#[$fmeta])* $fvis $field: $ty [ $($spec)* ] ),* }
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $crate::config::setting!(@default $ty; $($spec)*) ),* }
            }
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident: $ty:ty [ $($spec:tt)* ] ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name { $( $(#[$fmeta])* $fvis $field: $ty ),* }

        impl $crate::config::Group for $name {
            fn names(out: &mut Vec<&'static str>) {
                $( $crate::config::setting!(@names out, $ty; $($spec)*); )*
            }

            fn load(source: &$crate::config::Source<'_>) -> Result<Self, $crate::config::ConfigError> {
                Ok(Self { $( $field: $crate::config::setting!(@load source, $ty; $($spec)*)? ),* })
            }
        }

        /// Names of the environment variables. They are a contract with tooling outside the code.
        pub mod env {
            $( $crate::config::setting!(@env $($spec)*); )*
        }
    };
}
pub(crate) use settings;

/// One field of [`settings!`]; not for direct use.
macro_rules! setting {
    (@load $source:ident, $ty:ty; $c:ident = $env:literal or file $fc:ident = $fenv:literal, $rule:expr, required) => {
        $crate::config::declare::required_secret($source, $env, $fenv, $rule)
    };
    (@load $source:ident, $ty:ty; $c:ident = $env:literal or file $fc:ident = $fenv:literal, $rule:expr, optional) => {
        $crate::config::declare::optional_secret($source, $env, $fenv, $rule)
    };
    (@load $source:ident, $ty:ty; $c:ident = $env:literal, $rule:expr, required) => {
        $crate::config::declare::required($source, $env, $rule)
    };
    (@load $source:ident, $ty:ty; $c:ident = $env:literal, $rule:expr, optional) => {
        $crate::config::declare::optional($source, $env, $rule)
    };
    (@load $source:ident, $ty:ty; $c:ident = $env:literal, $rule:expr, default $default:expr) => {
        $crate::config::declare::or_default($source, $env, $rule, $default)
    };
    (@load $source:ident, $ty:ty; group $($module:ident)::+) => {
        <$ty as $crate::config::Group>::load($source)
    };

    (@names $out:ident, $ty:ty; $c:ident = $env:literal or file $fc:ident = $fenv:literal, $($rest:tt)*) => {
        $out.extend([$env, $fenv])
    };
    (@names $out:ident, $ty:ty; $c:ident = $env:literal, $($rest:tt)*) => {
        $out.push($env)
    };
    (@names $out:ident, $ty:ty; group $($module:ident)::+) => {
        <$ty as $crate::config::Group>::names($out)
    };

    (@default $ty:ty; $c:ident = $env:literal or file $fc:ident = $fenv:literal, $rule:expr, optional) => {
        None
    };
    (@default $ty:ty; $c:ident = $env:literal, $rule:expr, optional) => {
        None
    };
    (@default $ty:ty; $c:ident = $env:literal, $rule:expr, default $default:expr) => {
        $default
    };
    (@default $ty:ty; group $($module:ident)::+) => {
        <$ty as Default>::default()
    };

    (@env $c:ident = $env:literal or file $fc:ident = $fenv:literal, $($rest:tt)*) => {
        pub const $c: &str = $env;
        pub const $fc: &str = $fenv;
    };
    (@env $c:ident = $env:literal, $($rest:tt)*) => {
        pub const $c: &str = $env;
    };
    (@env group $($module:ident)::+) => {
        pub use $($module)::+::env::*;
    };
}
pub(crate) use setting;
