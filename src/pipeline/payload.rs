//! A JSON body validated once, whose values are materialised only where asked.
//!
//! An event is ~2 KB of JSON of which hookgate reads two to four values (id, type, a route's
//! `match` fields). Building a full `serde_json::Value` tree for it cost more CPU than the
//! rest of the parse stage (allocations for every object and string, then freeing them). The
//! whole body is still checked once, as JSON, up front; a lookup then walks the borrowed text
//! along its pointer and materialises just the value at the end.
//!
//! The check also notes where each top-level member is. Every lookup would otherwise scan the
//! whole body just to pass the root (to the end: the last of duplicate keys wins), and the id
//! and type both live one level down, in the small `event` object.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

/// A validated JSON document, borrowed from the request body.
#[derive(Debug, Clone)]
pub struct Payload<'a> {
    /// The whole document (valid JSON, so valid UTF-8), made text only when a lookup walks
    /// it: with an object root, lookups start from `members` and never need it.
    root: &'a [u8],
    /// The root object's members in document order; `None` if the root is not an object.
    members: Option<Vec<(Key<'a>, &'a RawValue)>>,
}

impl<'a> Payload<'a> {
    /// Checks that `body` is one JSON document, in one pass that builds nothing but the
    /// list of where the root's members are.
    ///
    /// # Errors
    /// The JSON syntax error, with its position.
    pub fn parse(body: &'a [u8]) -> Result<Self, serde_json::Error> {
        let is_object = body.trim_ascii_start().first() == Some(&b'{');
        if !is_object {
            let root: &'a RawValue = serde_json::from_slice(body)?;
            return Ok(Self {
                root: root.get().as_bytes(),
                members: None,
            });
        }
        let Members(members) = serde_json::from_slice(body)?;
        Ok(Self {
            root: body.trim_ascii(),
            members: Some(members),
        })
    }

    /// The value at JSON pointer `pointer` (RFC 6901), if there is one.
    pub fn get(&self, pointer: &str) -> Option<Value> {
        // Valid JSON is valid UTF-8 (strings were checked; the rest is ASCII): this does not
        // fail, and runs only for a lookup of the whole document or in a non-object root.
        let root = || std::str::from_utf8(self.root).ok();
        if pointer.is_empty() {
            return serde_json::from_str(root()?).ok();
        }
        let mut tokens = pointer.strip_prefix('/')?.split('/');
        let first = unescape(tokens.next()?);
        let mut current = match &self.members {
            // Like `serde_json::Value`, the last of duplicate keys wins.
            Some(members) => members
                .iter()
                .rev()
                .find(|(key, _)| key.0 == first)
                .map(|(_, value)| value.get())?,
            None => child(root()?, &first)?,
        };
        for token in tokens {
            current = child(current, &unescape(token))?;
        }
        serde_json::from_str(current).ok()
    }
}

/// The members of a JSON object, each as the raw text of its value.
struct Members<'a>(Vec<(Key<'a>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(4));
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    members.push((key, map.next_value()?));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

fn unescape(token: &str) -> Cow<'_, str> {
    if token.contains('~') {
        Cow::Owned(token.replace("~1", "/").replace("~0", "~"))
    } else {
        Cow::Borrowed(token)
    }
}

/// The member `token` of an object, or the element `token` of an array, as raw text.
fn child<'a>(text: &'a str, token: &str) -> Option<&'a str> {
    let mut json = serde_json::Deserializer::from_str(text);
    match text.trim_start().as_bytes().first()? {
        b'{' => Member(token).deserialize(&mut json).ok().flatten(),
        b'[' => {
            let index = token.parse().ok()?;
            Element(index).deserialize(&mut json).ok().flatten()
        }
        _ => None,
    }
    .map(RawValue::get)
}

/// Finds one member of an object, skipping the others without building them. Like
/// `serde_json::Value`, the last of duplicate keys wins.
struct Member<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for Member<'_> {
    type Value = Option<&'de RawValue>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Member<'_> {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(Key(key)) = map.next_key()? {
            if key == self.0 {
                found = Some(map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Finds one element of an array, skipping the others.
struct Element(usize);

impl<'de> DeserializeSeed<'de> for Element {
    type Value = Option<&'de RawValue>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Element {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        let mut index = 0;
        loop {
            if index == self.0 {
                match seq.next_element()? {
                    Some(raw) => found = Some(raw),
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            index += 1;
        }
        Ok(found)
    }
}

/// An object key, borrowed from the body unless it contains escapes.
#[derive(Debug, Clone)]
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(key)))
            }
            fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BODY: &str = r#" {"event": {"id": 5367, "type": "fulfilment_pending"},
        "data": {"campaign": {"id": 41001}, "list": [10, {"x": "y"}, 30],
                 "a/b": {"m~n": true}, "esc\u0061ped": "yes", "dup": 1, "dup": 2},
        "top": 1, "t\u006fp": 2, "~/": {"k": "v"}} "#;

    #[test]
    fn looks_up_values_like_value_pointer_does() {
        let payload = Payload::parse(BODY.as_bytes()).unwrap();
        let tree: Value = serde_json::from_str(BODY).unwrap();
        for pointer in [
            "/event/id",
            "/event/type",
            "/data/campaign/id",
            "/data/list/0",
            "/data/list/1/x",
            "/data/list/2",
            "/data/a~1b/m~0n",
            "/data/escaped",
            "/data/dup",
            "/top",
            "/~0~1/k",
            "/event",
            "",
            "/missing",
            "/data/list/3",
            "/data/list/x",
            "/event/id/deeper",
            "no-leading-slash",
        ] {
            assert_eq!(
                payload.get(pointer),
                tree.pointer(pointer).cloned(),
                "{pointer:?}"
            );
        }
        assert_eq!(payload.get("/data/campaign/id"), Some(json!(41001)));
    }

    #[test]
    fn a_root_that_is_not_an_object_is_walked_too() {
        let payload = Payload::parse(br#" [1, {"a": "b"}] "#).unwrap();
        assert_eq!(payload.get("/1/a"), Some(json!("b")));
        assert_eq!(payload.get(""), Some(json!([1, {"a": "b"}])));
        assert_eq!(payload.get("/event/id"), None);
        let scalar = Payload::parse(b"5367").unwrap();
        assert_eq!(scalar.get(""), Some(json!(5367)));
        assert_eq!(scalar.get("/0"), None);
    }

    #[test]
    fn only_a_whole_valid_document_is_accepted() {
        for bad in [&b"{\"a\": 1"[..], b"{\"a\": 1} x", b"", b"\xff", b"[1,]"] {
            assert!(
                Payload::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_exhausting_the_stack() {
        let deep = "[".repeat(100_000);
        assert!(Payload::parse(deep.as_bytes()).is_err());
        let deep_in_an_object = format!("{{\"a\": {deep}");
        assert!(Payload::parse(deep_in_an_object.as_bytes()).is_err());
    }
}
