//! The rest of OpenAI's surface in its wire format: moderations (a result per input with `categories`,
//! `category_scores` and, for omni models, `category_applied_input_types`), image generation (`data[].url`, or
//! `data[].b64_json` when asked and always for `gpt-image-1`, which also reports `usage`), text to speech (binary
//! audio with the format's `Content-Type`, sent in chunks so a fault can cut it midway) and transcriptions of
//! `multipart/form-data` uploads (`{"text"}`, `verbose_json`, or `text/plain`).
//!
//! Answers are deterministic: [`speech_audio`] gives the exact bytes a speech request gets, [`image_b64`] the exact
//! base64 of an image.

use base64::Engine as _;
use serde_json::{Value, json};

use super::answers;

/// The categories of OpenAI's moderation result, in its order.
pub const MODERATION_CATEGORIES: [&str; 13] = [
    "sexual",
    "sexual/minors",
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "violence",
    "violence/graphic",
];

/// The model of a moderation request that names none.
pub const DEFAULT_MODERATION_MODEL: &str = "omni-moderation-latest";
/// The model of an image request that names none.
pub const DEFAULT_IMAGE_MODEL: &str = "dall-e-2";

/// A moderation input mentioning this word is flagged for `violence`.
pub const FLAGGED_WORD: &str = "attack";

/// The size of one speech answer, and of each chunk it is sent in.
pub const SPEECH_BYTES: usize = 24 * 1024;
pub const SPEECH_CHUNK: usize = 4 * 1024;

/// What a healthy answer of one of these endpoints needs from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SurfaceCall {
    Moderation { texts: Vec<String> },
    Image { prompt: String, n: usize, b64: bool },
    Speech { input: String, voice: String, content_type: &'static str },
    Transcription { filename: String, bytes: u64, digest: String, format: TranscriptFormat },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TranscriptFormat {
    Json,
    Text,
    VerboseJson,
}

/// A refusal as (message, param, code).
pub(super) type Refusal = (&'static str, Option<&'static str>, Option<&'static str>);

fn missing(param: &'static str, message: &'static str) -> Refusal {
    (message, Some(param), Some("missing_required_parameter"))
}

pub(super) fn moderation(body: &Value) -> Result<SurfaceCall, Refusal> {
    let texts = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => Some(o.get("text").and_then(Value::as_str).unwrap_or_default().to_owned()),
                _ => None,
            })
            .collect::<Option<Vec<String>>>()
            .ok_or(("Invalid type for 'input'.", Some("input"), Some("invalid_type")))?,
        Some(_) => return Err(("Invalid type for 'input'.", Some("input"), Some("invalid_type"))),
        None => return Err(missing("input", "Missing required parameter: 'input'.")),
    };
    Ok(SurfaceCall::Moderation { texts })
}

pub(super) fn image(body: &Value, model: &str) -> Result<SurfaceCall, Refusal> {
    let Some(prompt) = body.get("prompt").and_then(Value::as_str) else {
        return Err(missing("prompt", "Missing required parameter: 'prompt'."));
    };
    let n = match body.get("n") {
        None | Some(Value::Null) => 1,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=10) => n as usize,
            _ => return Err(("Invalid value for 'n': must be between 1 and 10.", Some("n"), Some("invalid_value"))),
        },
    };
    if model == "dall-e-3" && n != 1 {
        return Err(("You must provide n=1 for this model.", Some("n"), Some("invalid_value")));
    }
    let b64 = model == "gpt-image-1" || body.get("response_format").and_then(Value::as_str) == Some("b64_json");
    Ok(SurfaceCall::Image { prompt: prompt.to_owned(), n, b64 })
}

pub(super) fn speech(body: &Value) -> Result<SurfaceCall, Refusal> {
    let Some(input) = body.get("input").and_then(Value::as_str) else {
        return Err(missing("input", "Missing required parameter: 'input'."));
    };
    let Some(voice) = body.get("voice").and_then(Value::as_str) else {
        return Err(missing("voice", "Missing required parameter: 'voice'."));
    };
    let content_type = match body.get("response_format").and_then(Value::as_str).unwrap_or("mp3") {
        "mp3" => "audio/mpeg",
        "opus" => "audio/opus",
        "aac" => "audio/aac",
        "flac" => "audio/flac",
        "wav" => "audio/wav",
        "pcm" => "audio/pcm",
        _ => return Err(("Invalid value for 'response_format'.", Some("response_format"), Some("invalid_value"))),
    };
    Ok(SurfaceCall::Speech { input: input.to_owned(), voice: voice.to_owned(), content_type })
}

/// A `multipart/form-data` body as JSON: each text field by name, and each file part as
/// `{"filename", "content_type", "bytes", "fnv64"}` (its length and a digest of its exact bytes). `None` when the form
/// cannot be read.
pub fn form_json(body: &[u8], boundary: &str) -> Option<Value> {
    let parts = crate::engine::multipart::parts(body, boundary).ok()?;
    let mut map = serde_json::Map::new();
    for part in parts {
        let bytes = &body[part.value.clone()];
        let value = match &part.filename {
            Some(filename) => json!({"filename": filename, "content_type": part.content_type, "bytes": bytes.len(),
                                     "fnv64": format!("{:016x}", seed_bytes(bytes))}),
            None => Value::String(String::from_utf8_lossy(bytes).into_owned()),
        };
        map.insert(part.name, value);
    }
    Some(Value::Object(map))
}

/// The text a healthy transcription of this file by `model` gets: it names the file's size and digest, so a test can
/// tell the upload arrived byte for byte.
pub fn transcript(model: &str, filename: &str, bytes: u64, digest: &str) -> String {
    format!("Transcript of {filename} ({bytes} bytes, fnv64 {digest}) by {model}.")
}

/// [`transcript`] of a file given by its bytes.
pub fn transcript_of(model: &str, filename: &str, file: &[u8]) -> String {
    transcript(model, filename, file.len() as u64, &format!("{:016x}", seed_bytes(file)))
}

pub(super) fn transcription(body: &Value) -> Result<SurfaceCall, Refusal> {
    let Some(file) = body.get("file").filter(|f| f.is_object()) else {
        return Err(missing("file", "Missing required parameter: 'file'."));
    };
    let format = match body.get("response_format").and_then(Value::as_str).unwrap_or("json") {
        "json" => TranscriptFormat::Json,
        "text" => TranscriptFormat::Text,
        "verbose_json" => TranscriptFormat::VerboseJson,
        _ => return Err(("Invalid value for 'response_format'.", Some("response_format"), Some("invalid_value"))),
    };
    Ok(SurfaceCall::Transcription {
        filename: file.get("filename").and_then(Value::as_str).unwrap_or_default().to_owned(),
        bytes: file.get("bytes").and_then(Value::as_u64).unwrap_or_default(),
        digest: file.get("fnv64").and_then(Value::as_str).unwrap_or_default().to_owned(),
        format,
    })
}

impl SurfaceCall {
    /// The prompt's characters, for the token estimate.
    pub(super) fn chars(&self) -> usize {
        match self {
            Self::Transcription { .. } => 0,
            Self::Moderation { texts } => texts.iter().map(|t| t.chars().count()).sum(),
            Self::Image { prompt, .. } => prompt.chars().count(),
            Self::Speech { input, .. } => input.chars().count(),
        }
    }
}

fn seed_bytes(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// A 64-bit FNV-1a of the parts, for deterministic answers.
fn seed(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Deterministic bytes from `seed` (xorshift), every value 0-255 included.
fn noise(mut seed: u64, len: usize, out: &mut Vec<u8>) {
    seed |= 1;
    for _ in 0..len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.push((seed >> 24) as u8);
    }
}

/// The exact audio a healthy speech request for (model, input, voice) gets: an ID3-tagged "file" of
/// [`SPEECH_BYTES`] bytes of non-text data.
pub fn speech_audio(model: &str, input: &str, voice: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(SPEECH_BYTES);
    out.extend_from_slice(b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x00");
    let rest = SPEECH_BYTES - out.len();
    noise(seed(&[model, input, voice]), rest, &mut out);
    out
}

/// The base64 of image `index` for (model, prompt): a tiny PNG-signed blob.
pub fn image_b64(model: &str, prompt: &str, index: usize) -> String {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    noise(seed(&[model, prompt, &index.to_string()]), 256, &mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The URL of image `index` for (model, prompt).
pub fn image_url(model: &str, prompt: &str, index: usize) -> String {
    format!("https://images.mock.invalid/{model}/img-{:016x}-{index}.png", seed(&[model, prompt]))
}

/// Writes the answer of a moderation, image or transcription call into `out`; returns its Content-Type. Ids and URLs
/// derive from the request, so the same request gets the same bytes (images: within the same second of `created`).
pub(super) fn write_answer(out: &mut Vec<u8>, call: &SurfaceCall, model: &str, created: u64) -> &'static str {
    let value = match call {
        SurfaceCall::Transcription { filename, bytes, digest, format } => {
            let text = transcript(model, filename, *bytes, digest);
            match format {
                TranscriptFormat::Text => {
                    out.extend_from_slice(text.as_bytes());
                    out.push(b'\n');
                    return "text/plain; charset=utf-8";
                }
                TranscriptFormat::Json => json!({"text": text}),
                TranscriptFormat::VerboseJson => {
                    json!({"task": "transcribe", "language": "english", "duration": 1.5, "text": text,
                           "segments": [{"id": 0, "start": 0.0, "end": 1.5, "text": text}]})
                }
            }
        }
        SurfaceCall::Moderation { texts } => {
            let omni = model.starts_with("omni-");
            let results: Vec<Value> = texts
                .iter()
                .map(|text| {
                    let violent = text.to_lowercase().contains(FLAGGED_WORD);
                    let mut categories = serde_json::Map::new();
                    let mut scores = serde_json::Map::new();
                    let mut applied = serde_json::Map::new();
                    for (i, name) in MODERATION_CATEGORIES.iter().enumerate() {
                        let hit = violent && *name == "violence";
                        categories.insert((*name).to_owned(), Value::Bool(hit));
                        let score = if hit { 0.93 } else { 0.0001 * (i as f64 + 1.0) };
                        scores.insert((*name).to_owned(), json!(score));
                        applied.insert((*name).to_owned(), json!(["text"]));
                    }
                    let mut result = json!({"flagged": violent, "categories": categories, "category_scores": scores});
                    if omni {
                        result["category_applied_input_types"] = Value::Object(applied);
                    }
                    result
                })
                .collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let id = seed(&[&[model], refs.as_slice()].concat());
            json!({"id": format!("modr-{id:016x}"), "model": model, "results": results})
        }
        SurfaceCall::Image { prompt, n, b64 } => {
            let data: Vec<Value> = (0..*n)
                .map(|i| {
                    let mut item = if *b64 {
                        json!({"b64_json": image_b64(model, prompt, i)})
                    } else {
                        json!({"url": image_url(model, prompt, i)})
                    };
                    if model == "dall-e-3" {
                        item["revised_prompt"] = json!(format!("A detailed picture: {prompt}"));
                    }
                    item
                })
                .collect();
            let mut answer = json!({"created": created, "data": data});
            if model == "gpt-image-1" {
                let input = answers::tokens_of_chars(prompt.chars().count());
                let output = 272 * u32::try_from(*n).unwrap_or(1);
                answer["usage"] = json!({"input_tokens": input, "output_tokens": output,
                                         "total_tokens": input + output,
                                         "input_tokens_details": {"text_tokens": input, "image_tokens": 0}});
            }
            answer
        }
        SurfaceCall::Speech { .. } => Value::Null,
    };
    let _ = serde_json::to_writer(out, &value);
    "application/json"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_deterministic_and_in_openai_shape() {
        let a = speech_audio("tts-1", "hello", "alloy");
        assert_eq!(a, speech_audio("tts-1", "hello", "alloy"));
        assert_ne!(a, speech_audio("tts-1-hd", "hello", "alloy"));
        assert_eq!(a.len(), SPEECH_BYTES);
        assert!(std::str::from_utf8(&a).is_err(), "binary, not text");
        let call = moderation(&json!({"input": ["fine", "an attack"]})).unwrap();
        let mut out = Vec::new();
        write_answer(&mut out, &call, "omni-moderation-latest", 0);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["results"].as_array().unwrap().len(), 2);
        assert_eq!(
            (v["results"][0]["flagged"].clone(), v["results"][1]["categories"]["violence"].clone()),
            (json!(false), json!(true))
        );
        assert_eq!(v["results"][0]["category_scores"].as_object().unwrap().len(), 13);
        assert!(image(&json!({"prompt": "x", "n": 2}), "dall-e-3").is_err());
        assert!(speech(&json!({"input": "x", "voice": "alloy", "response_format": "midi"})).is_err());
    }
}
