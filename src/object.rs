//! JSON objects only. serde's derived `Deserialize` for a struct also accepts an array of its fields in order, so
//! `["a@b.co", ["sk-..."]]` would be a key set and `{"policy": []}` a policy with every default. Request bodies and
//! their nested settings objects go through these instead, so an array is refused with a clear error.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

/// A request body that must be a JSON object.
#[derive(Debug)]
pub struct Object<T>(pub T);

impl<T> Object<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        object(d).map(Object)
    }
}

struct ObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map))
    }
}

/// `T` from a JSON object and nothing else.
pub fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    d.deserialize_map(ObjectVisitor(PhantomData))
}

struct OptionalVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for OptionalVisitor<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
        object(d).map(Some)
    }
}

/// For `Option<T>` fields (with `#[serde(default)]`): `null` or absent is `None`, an object is `Some`, anything else
/// is an error.
pub fn optional_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    d.deserialize_option(OptionalVisitor(PhantomData))
}

/// A JSON object whose top-level keys are all distinct. `{"model": "a", "model": "b"}` is ambiguous: one reader takes
/// the first, another the last, so a gateway could route by one model while the upstream serves another.
#[derive(Debug)]
pub struct UniqueKeys(pub serde_json::Map<String, serde_json::Value>);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UniqueKeys;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
                let mut out = serde_json::Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value()?;
                    if out.contains_key(&key) {
                        return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
                    }
                    out.insert(key, value);
                }
                Ok(UniqueKeys(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A JSON object's top level read like [`UniqueKeys`] (distinct keys; the whole document checked exactly as
/// `serde_json::Value` would check it), but only the values of `keep` are built: everything else is validated and
/// dropped, without allocating a tree for it. A 16 KiB chat history takes about half the time of a full parse.
pub fn unique_keys_keeping(
    raw: &[u8],
    keep: &[&str],
) -> serde_json::Result<serde_json::Map<String, serde_json::Value>> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    let map = de::DeserializeSeed::deserialize(Keeping(keep), &mut de)?;
    de.end()?;
    Ok(map)
}

struct Keeping<'k>(&'k [&'k str]);

impl<'de> de::DeserializeSeed<'de> for Keeping<'_> {
    type Value = serde_json::Map<String, serde_json::Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Keeping<'_> {
    type Value = serde_json::Map<String, serde_json::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen: Vec<Key<'de>> = Vec::with_capacity(8);
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            if self.0.contains(&key.0.as_ref()) {
                out.insert(key.0.clone().into_owned(), map.next_value()?);
            } else {
                map.next_value::<Checked>()?;
            }
            if seen.contains(&key) {
                return Err(de::Error::custom(format_args!("duplicate field `{}`", key.0)));
            }
            seen.push(key);
        }
        Ok(out)
    }
}

/// An object key, borrowed from the input unless it holds escapes.
#[derive(PartialEq)]
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Any JSON value, checked as `serde_json::Value` checks it (strings decoded, numbers in range, nesting limited) and
/// then dropped.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, serde::Deserialize, PartialEq, Default)]
    struct Inner {
        #[serde(default)]
        a: u32,
    }

    #[derive(Debug, serde::Deserialize)]
    struct Outer {
        #[serde(default, deserialize_with = "optional_object")]
        inner: Option<Inner>,
    }

    #[test]
    fn arrays_are_refused_where_objects_are_expected() {
        // What plain derive does, and why this module exists.
        assert_eq!(serde_json::from_value::<Inner>(json!([7])).unwrap(), Inner { a: 7 });
        assert_eq!(serde_json::from_value::<Object<Inner>>(json!({"a": 7})).unwrap().0, Inner { a: 7 });
        let err = serde_json::from_value::<Object<Inner>>(json!([7])).unwrap_err().to_string();
        assert!(err.contains("expected a JSON object"), "{err}");
        assert!(serde_json::from_str::<Object<Inner>>("[]").is_err());
        assert!(serde_json::from_str::<Object<Inner>>("\"x\"").is_err());

        assert_eq!(serde_json::from_value::<Outer>(json!({"inner": {"a": 1}})).unwrap().inner, Some(Inner { a: 1 }));
        assert_eq!(serde_json::from_value::<Outer>(json!({"inner": null})).unwrap().inner, None);
        assert_eq!(serde_json::from_value::<Outer>(json!({})).unwrap().inner, None);
        let err = serde_json::from_value::<Outer>(json!({"inner": []})).unwrap_err().to_string();
        assert!(err.contains("expected a JSON object"), "{err}");
    }

    #[test]
    fn duplicate_top_level_keys_are_refused() {
        let ok = serde_json::from_str::<UniqueKeys>(r#"{"model": "a", "x": {"model": 1, "model": 2}}"#).unwrap();
        assert_eq!(ok.0["model"], "a");
        let err = serde_json::from_str::<UniqueKeys>(r#"{"model": "a", "stream": true, "model": "b"}"#).unwrap_err();
        assert!(err.to_string().contains("duplicate field `model`"), "{err}");
        assert!(serde_json::from_str::<UniqueKeys>("[1]").is_err());
    }

    /// The keeping scan accepts and refuses exactly what the full parse does, and keeps only the named fields.
    #[test]
    fn the_keeping_scan_checks_like_the_full_parse() {
        let keep = ["model", "stream"];
        let ok = unique_keys_keeping(
            br#"{"model": "a", "x": {"model": 1, "model": 2}, "stream": true, "n": [1.5e3]}"#,
            &keep,
        )
        .unwrap();
        assert_eq!(serde_json::Value::Object(ok), json!({"model": "a", "stream": true}));
        let cases: &[&[u8]] = &[
            br#"{"model": "a", "stream": true, "model": "b"}"#,
            br#"{"x": 1, "x": 2}"#,
            b"[1]",
            b"\"x\"",
            br#"{"x": "\ud800"}"#,
            br#"{"x": 1e400}"#,
            br#"{"x": "a\qb"}"#,
            b"{\"x\": \"\xff\"}",
            br#"{"x": [1, 2,]}"#,
            br#"{"x": 1} trailing"#,
            br#"{"x": {"\ud800": 1}}"#,
            br#"{"mo\u0064el": "a", "model": "b"}"#,
            br#"{"messages": [{"role": "user", "content": "hi \u00e9 \"quoted\""}], "t": -0.5, "u": null}"#,
        ];
        for raw in cases {
            let full = serde_json::from_slice::<UniqueKeys>(raw);
            let scan = unique_keys_keeping(raw, &keep);
            assert_eq!(full.is_ok(), scan.is_ok(), "{}", String::from_utf8_lossy(raw));
            if let (Err(a), Err(b)) = (&full, &scan) {
                assert_eq!(a.classify(), b.classify(), "{}", String::from_utf8_lossy(raw));
            }
        }
        let escaped = unique_keys_keeping(br#"{"mo\u0064el": "a", "x\n": 1}"#, &keep).unwrap();
        assert_eq!(serde_json::Value::Object(escaped), json!({"model": "a"}));
        let deep = format!("{{\"x\": {}1{}}}", "[".repeat(200), "]".repeat(200));
        assert!(serde_json::from_str::<UniqueKeys>(&deep).is_err());
        assert!(unique_keys_keeping(deep.as_bytes(), &keep).is_err());
    }
}
