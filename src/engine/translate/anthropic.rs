//! Anthropic Messages (`POST /v1/messages`, `anthropic-version: 2023-06-01`, key in `x-api-key`).

mod answer;
mod request;

pub use answer::{AnthropicStream, anthropic_response, classify_anthropic};
pub use request::anthropic_request;

#[cfg(test)]
mod tests;
