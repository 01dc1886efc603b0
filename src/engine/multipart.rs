//! `multipart/form-data` (RFC 7578) as far as the gateway needs it: find the parts of an upload, and replace the value
//! of one part (`model`, on fallback) while every other byte — boundary, headers, file — stays as the client sent it.

use std::ops::Range;

use actix_web::web::Bytes;

/// One part: its field name, file name and content type when given, and where its value lies in the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub value: Range<usize>,
}

/// The boundary of a `multipart/form-data` Content-Type (1-70 characters, quoted or not); `None` for anything else.
pub fn boundary(content_type: &str) -> Option<&str> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim();
        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
        (!v.is_empty() && v.len() <= 70 && !v.contains(['\r', '\n'])).then_some(v)
    })
}

/// The parts of `body`, in order. Refuses (with a short reason) a body that does not start with the boundary, a part
/// without a `form-data` name, or a body that does not end with the closing boundary.
pub fn parts(body: &[u8], boundary: &str) -> Result<Vec<Part>, &'static str> {
    let delimiter = format!("--{boundary}");
    let next_delimiter = format!("\r\n--{boundary}");
    let finder = memchr::memmem::Finder::new(next_delimiter.as_bytes());
    // The first delimiter may follow a preamble; conforming clients send none.
    let mut at = match memchr::memmem::find(body, delimiter.as_bytes()) {
        Some(0) => delimiter.len(),
        Some(i) if body[..i].ends_with(b"\r\n") => i + delimiter.len(),
        _ => return Err("the body does not start with the boundary"),
    };
    let mut out = Vec::new();
    loop {
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return if out.is_empty() { Err("the form has no fields") } else { Ok(out) };
        }
        if !rest.starts_with(b"\r\n") {
            return Err("malformed boundary line");
        }
        let head_start = at + 2;
        let head_len = memchr::memmem::find(&body[head_start..], b"\r\n\r\n").ok_or("a part's headers do not end")?;
        let head =
            std::str::from_utf8(&body[head_start..head_start + head_len]).map_err(|_| "part headers are not UTF-8")?;
        let value_start = head_start + head_len + 4;
        let value_len = finder.find(&body[value_start..]).ok_or("the form does not end with its closing boundary")?;
        let value = value_start..value_start + value_len;
        let (mut name, mut filename, mut content_type) = (None, None, None);
        for line in head.split("\r\n") {
            let Some((field, v)) = line.split_once(':') else { return Err("malformed part header") };
            if field.trim().eq_ignore_ascii_case("content-disposition") {
                let mut params = v.split(';');
                if !params.next().is_some_and(|d| d.trim().eq_ignore_ascii_case("form-data")) {
                    return Err("a part is not form-data");
                }
                for p in params {
                    let Some((k, v)) = p.split_once('=') else { continue };
                    let v = v.trim();
                    let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v).to_owned();
                    match k.trim() {
                        "name" => name = Some(v),
                        "filename" => filename = Some(v),
                        _ => {}
                    }
                }
            } else if field.trim().eq_ignore_ascii_case("content-type") {
                content_type = Some(v.trim().to_owned());
            }
        }
        let name = name.ok_or("a part has no name")?;
        out.push(Part { name, filename, content_type, value: value.clone() });
        at = value.end + next_delimiter.len();
    }
}

/// `body` with the bytes in `range` replaced by `value`.
pub fn replace(body: &[u8], range: Range<usize>, value: &str) -> Bytes {
    let mut out = Vec::with_capacity(body.len() + value.len());
    out.extend_from_slice(&body[..range.start]);
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(&body[range.end..]);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORM: &[u8] = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\n\
Content-Type: audio/mpeg\r\n\r\nID3\x00\xff\r\n--X\r\n\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n\
whisper-1\r\n--XyZ--\r\n";

    #[test]
    fn parts_are_found_and_one_value_is_replaced_byte_for_byte() {
        assert_eq!(boundary("multipart/form-data; boundary=XyZ"), Some("XyZ"));
        assert_eq!(boundary("Multipart/Form-Data;charset=utf-8; boundary=\"a b\""), Some("a b"));
        assert_eq!(boundary("application/json"), None);
        assert_eq!(boundary("multipart/form-data"), None);
        let parts = parts(FORM, "XyZ").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!((parts[0].name.as_str(), parts[0].filename.as_deref()), ("file", Some("a.mp3")));
        assert_eq!(parts[0].content_type.as_deref(), Some("audio/mpeg"));
        assert_eq!(&FORM[parts[0].value.clone()], b"ID3\x00\xff\r\n--X\r\n");
        assert_eq!(&FORM[parts[1].value.clone()], b"whisper-1");
        let swapped = replace(FORM, parts[1].value.clone(), "gpt-4o-transcribe");
        let expected = [&FORM[..parts[1].value.start], b"gpt-4o-transcribe", &FORM[parts[1].value.end..]].concat();
        assert_eq!(&swapped[..], &expected[..]);
        assert_eq!(&swapped[parts[1].value.start..parts[1].value.start + 17], b"gpt-4o-transcribe");
    }

    #[test]
    fn malformed_forms_are_refused_without_panicking() {
        for bad in [
            &b""[..],
            b"--XyZ",
            b"--XyZ--",
            b"nope--XyZ\r\n",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nno end",
            b"--XyZ\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nv\r\n--XyZ--",
            b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nv\r\n--XyZ--",
            b"--XyZ\r\nno colon\r\n\r\nv\r\n--XyZ--",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"",
            b"--XyZxx",
        ] {
            assert!(parts(bad, "XyZ").is_err(), "{}", String::from_utf8_lossy(bad));
        }
        for cut in 0..FORM.len() {
            let _ = parts(&FORM[..cut], "XyZ");
        }
    }
}
