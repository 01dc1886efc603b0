//! Gemini `generateContent` / `streamGenerateContent?alt=sse` (key in `x-goog-api-key`; the model is in the URL).

mod answer;
mod request;

// Unused until the provider step wires them in (`dead_code` does not cover re-exports).
#[allow(unused_imports)]
pub use answer::{GeminiStream, classify_gemini, gemini_response};
#[allow(unused_imports)]
pub use request::gemini_request;

#[cfg(test)]
mod tests;
