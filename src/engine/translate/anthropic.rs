//! Anthropic Messages (`POST /v1/messages`, `anthropic-version: 2023-06-01`, key in `x-api-key`).

mod answer;
mod request;

// Unused until the provider step wires them in (`dead_code` does not cover re-exports).
#[allow(unused_imports)]
pub use answer::{AnthropicStream, anthropic_response, classify_anthropic};
#[allow(unused_imports)]
pub use request::anthropic_request;

#[cfg(test)]
mod tests;
