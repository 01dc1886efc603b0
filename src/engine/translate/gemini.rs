//! Gemini `generateContent` / `streamGenerateContent?alt=sse` (key in `x-goog-api-key`; the model is in the URL).

mod answer;
mod request;

pub use answer::{GeminiStream, classify_gemini, gemini_response};
pub use request::gemini_request;

#[cfg(test)]
mod tests;
