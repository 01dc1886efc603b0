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
}
