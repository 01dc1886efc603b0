//! Just enough HTTP/1.1: request head and body parsing (Content-Length or chunked) and response framing.

use std::io::Write;

/// The largest request head accepted (request line + headers).
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The largest request body accepted.
pub(crate) const MAX_BODY: usize = 32 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Post,
    Delete,
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyKind {
    Length(usize),
    Chunked,
}

/// A parsed request head; only the headers the mock cares about are kept.
#[derive(Debug)]
pub(crate) struct Head {
    pub method: Method,
    pub method_name: String,
    pub target: String,
    pub keep_alive: bool,
    pub body: BodyKind,
    pub expect_continue: bool,
    /// The token of `Authorization: Bearer X`.
    pub bearer: Option<String>,
    /// The `api-key` header (Azure).
    pub api_key: Option<String>,
    /// The `Content-Type` header (a form upload's boundary is read from it).
    pub content_type: Option<String>,
    /// The `x-api-key` header (Anthropic).
    pub x_api_key: Option<String>,
    /// The `anthropic-version` header.
    pub anthropic_version: Option<String>,
    /// The `x-goog-api-key` header (Gemini).
    pub goog_api_key: Option<String>,
    /// Bytes of the head including the blank line.
    pub len: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// Malformed request: answer 400 and close.
    Bad(&'static str),
    /// Head too large: 431 and close.
    HeadTooLarge,
    /// Body too large: 413 and close.
    BodyTooLarge,
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Parses the head at the start of `buf`; `Ok(None)` when more bytes are needed.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<Head>, ParseError> {
    let Some(len) = find_head_end(buf) else {
        return if buf.len() > MAX_HEAD { Err(ParseError::HeadTooLarge) } else { Ok(None) };
    };
    if len > MAX_HEAD {
        return Err(ParseError::HeadTooLarge);
    }
    let text = std::str::from_utf8(&buf[..len - 4]).map_err(|_| ParseError::Bad("request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method_name), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Bad("malformed request line"));
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(ParseError::Bad("unsupported HTTP version")),
    };
    if method_name.is_empty() || !target.starts_with('/') {
        return Err(ParseError::Bad("malformed request line"));
    }
    let method = match method_name {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "DELETE" => Method::Delete,
        _ => Method::Other,
    };
    let mut head = Head {
        method,
        method_name: method_name.to_owned(),
        target: target.to_owned(),
        keep_alive: !http10,
        body: BodyKind::Length(0),
        expect_continue: false,
        bearer: None,
        api_key: None,
        content_type: None,
        x_api_key: None,
        anthropic_version: None,
        goog_api_key: None,
        len,
    };
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ParseError::Bad("malformed header line"));
        };
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| ParseError::Bad("invalid Content-Length"))?;
            if content_length.is_some_and(|old| old != n) {
                return Err(ParseError::Bad("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(ParseError::Bad("unsupported Transfer-Encoding"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    head.keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") && http10 {
                    head.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("authorization") {
            if let Some((scheme, token)) = value.split_once(' ')
                && scheme.eq_ignore_ascii_case("bearer")
            {
                let token = token.trim();
                if !token.is_empty() {
                    head.bearer = Some(token.to_owned());
                }
            }
        } else if name.eq_ignore_ascii_case("api-key") {
            if !value.is_empty() {
                head.api_key = Some(value.to_owned());
            }
        } else if name.eq_ignore_ascii_case("x-api-key") {
            head.x_api_key = Some(value.to_owned()).filter(|v| !v.is_empty());
        } else if name.eq_ignore_ascii_case("anthropic-version") {
            head.anthropic_version = Some(value.to_owned()).filter(|v| !v.is_empty());
        } else if name.eq_ignore_ascii_case("x-goog-api-key") {
            head.goog_api_key = Some(value.to_owned()).filter(|v| !v.is_empty());
        } else if name.eq_ignore_ascii_case("content-type") {
            head.content_type = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    if chunked {
        if content_length.is_some() {
            return Err(ParseError::Bad("both Content-Length and Transfer-Encoding"));
        }
        head.body = BodyKind::Chunked;
    } else if let Some(n) = content_length {
        if n > MAX_BODY {
            return Err(ParseError::BodyTooLarge);
        }
        head.body = BodyKind::Length(n);
    }
    Ok(Some(head))
}

/// Decodes a chunked body at the start of `buf` (just after the head).
///
/// `Ok(Some((body, consumed)))` when complete, `Ok(None)` when more bytes are needed.
pub(crate) fn parse_chunked(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, ParseError> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(eol) = find_crlf(&buf[pos..]) else {
            return if buf.len() - pos > 1024 { Err(ParseError::Bad("chunk size line too long")) } else { Ok(None) };
        };
        let line = &buf[pos..pos + eol];
        let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
        let size_text = std::str::from_utf8(size_text).map_err(|_| ParseError::Bad("invalid chunk size"))?.trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| ParseError::Bad("invalid chunk size"))?;
        pos += eol + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(eol) = find_crlf(&buf[pos..]) else {
                    return if buf.len() - pos > MAX_HEAD { Err(ParseError::HeadTooLarge) } else { Ok(None) };
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, pos)));
                }
            }
        }
        if body.len().saturating_add(size) > MAX_BODY {
            return Err(ParseError::BodyTooLarge);
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size;
        if &buf[pos..pos + 2] != b"\r\n" {
            return Err(ParseError::Bad("chunk not followed by CRLF"));
        }
        pos += 2;
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        529 => "Overloaded",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Appends a complete response (status line, headers, `Content-Length`, body) to `out`.
pub(crate) fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    keep_alive: bool,
    body: &[u8],
) {
    let status = if (100..=999).contains(&status) { status } else { 500 };
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in extra_headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// The head of a chunked `text/event-stream` response.
pub(crate) fn write_sse_head(out: &mut Vec<u8>, keep_alive: bool) {
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n\
          Transfer-Encoding: chunked\r\n",
    );
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Frames `payload` as one HTTP chunk.
pub(crate) fn write_chunk(out: &mut Vec<u8>, payload: &[u8]) {
    let _ = write!(out, "{:x}\r\n", payload.len());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// The terminating zero-length chunk.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_head_with_auth_and_length() {
        let raw = b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nauthorization: Bearer sk-abc\r\n\
                    Content-Length: 2\r\n\r\n{}";
        let head = parse_head(raw).unwrap().unwrap();
        assert_eq!(head.method, Method::Post);
        assert_eq!(head.target, "/v1/chat/completions?x=1");
        assert_eq!(head.bearer.as_deref(), Some("sk-abc"));
        assert_eq!(head.body, BodyKind::Length(2));
        assert!(head.keep_alive);
        assert_eq!(&raw[head.len..], b"{}");
    }

    #[test]
    fn incomplete_head_needs_more() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap().map(|h| h.len), None);
    }

    #[test]
    fn http10_closes_by_default() {
        let head = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!head.keep_alive);
    }

    #[test]
    fn decodes_chunked_bodies() {
        let raw = b"4\r\n{\"a\"\r\n3;ext=1\r\n:1}\r\n0\r\nX-Trailer: y\r\n\r\nNEXT";
        let (body, used) = parse_chunked(raw).unwrap().unwrap();
        assert_eq!(body, b"{\"a\":1}");
        assert_eq!(&raw[used..], b"NEXT");
        assert_eq!(parse_chunked(&raw[..10]).unwrap(), None);
        assert!(parse_chunked(b"zz\r\n").is_err());
    }
}
