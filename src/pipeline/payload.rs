//! A JSON body validated once, whose values are materialised only where asked.
//!
//! An event is ~2 KB of JSON of which hookgate reads two to four values (id, type, a route's
//! `match` fields). Building a full `serde_json::Value` tree for it cost more CPU than the
//! rest of the parse stage (allocations for every object and string, then freeing them).
//!
//! The config says in advance which values will be read ([`Pointers`]), so the one pass that
//! checks the body as JSON also notes where each of those values is, and a lookup then only
//! materialises the value it finds there. Walking the borrowed text again per lookup cost a
//! second scan of most of the body for every `match` pointer under `/data` (the last of
//! duplicate keys wins, so a scan cannot stop at the first hit). A pointer the config does
//! not name is still answered, by such a walk.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::config::Config;

/// The JSON pointers (RFC 6901) a config reads from every event, as a tree of their tokens.
#[derive(Debug, Clone, Default)]
pub struct Pointers {
    root: Node,
    /// Each pointer as written, by slot: a lookup compares text instead of walking tokens.
    slots: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// Where the value at this node is noted, if a pointer ends here.
    slot: Option<usize>,
    children: Vec<Child>,
}

#[derive(Debug, Clone)]
struct Child {
    /// The unescaped token: an object member's name.
    token: String,
    /// The token as an array index, if it is one.
    index: Option<usize>,
    node: Node,
}

/// No pointers: [`Payload::parse`] notes nothing, and every lookup walks the text.
static NO_POINTERS: Pointers = Pointers {
    root: Node {
        slot: None,
        children: Vec::new(),
    },
    slots: Vec::new(),
};

impl Pointers {
    /// The set of `pointers`. One that is neither empty nor starts with `/` points at nothing
    /// and is left out.
    pub fn new<'p>(pointers: impl IntoIterator<Item = &'p str>) -> Self {
        let mut set = Self::default();
        for pointer in pointers {
            let tokens: Vec<Cow<'_, str>> = match pointer.strip_prefix('/') {
                _ if pointer.is_empty() => Vec::new(),
                Some(rest) => rest.split('/').map(unescape).collect(),
                None => continue,
            };
            let mut node = &mut set.root;
            for token in tokens {
                let at = match node.children.iter().position(|child| child.token == token) {
                    Some(at) => at,
                    None => {
                        node.children.push(Child {
                            index: array_index(&token),
                            token: token.into_owned(),
                            node: Node::default(),
                        });
                        node.children.len() - 1
                    }
                };
                node = &mut node.children[at].node;
            }
            if node.slot.is_none() {
                node.slot = Some(set.slots.len());
                set.slots.push(pointer.to_owned());
            }
        }
        set
    }

    /// Every pointer `config` reads: each source's event id and type, and every route's
    /// `match` pointers.
    pub fn of_config(config: &Config) -> Self {
        let sources = config
            .sources
            .iter()
            .flat_map(|source| [source.event_id.as_str(), source.event_type.as_str()]);
        let matches = config
            .routes
            .iter()
            .flat_map(|route| route.matches.iter().map(|(pointer, _)| pointer.as_str()));
        Self::new(sources.chain(matches))
    }

    /// Where the value at `pointer` is noted, if the set has it. A pointer spelled
    /// differently (`~0`-escaping what needs none) is not found, and is walked instead.
    fn slot(&self, pointer: &str) -> Option<usize> {
        self.slots.iter().position(|noted| noted == pointer)
    }
}

/// A validated JSON document, borrowed from the request body.
#[derive(Debug, Clone)]
pub struct Payload<'a> {
    /// The whole document.
    root: &'a str,
    pointers: &'a Pointers,
    /// The raw value at each of `pointers`, by slot.
    found: Vec<Option<&'a RawValue>>,
}

impl<'a> Payload<'a> {
    /// Checks that `body` is one JSON document (in UTF-8), noting nothing: every lookup
    /// walks the text.
    ///
    /// # Errors
    /// The JSON syntax error, with its position.
    pub fn parse(body: &'a [u8]) -> Result<Self, serde_json::Error> {
        Self::parse_noting(body, &NO_POINTERS)
    }

    /// Checks that `body` is one JSON document (in UTF-8) in one pass, which notes where the
    /// value at each of `pointers` is.
    ///
    /// # Errors
    /// The JSON syntax error, with its position.
    pub fn parse_noting(body: &'a [u8], pointers: &'a Pointers) -> Result<Self, serde_json::Error> {
        // Checked here because the pass below does not check strings it skips.
        let Ok(text) = std::str::from_utf8(body) else {
            return Err(utf8_error(body));
        };
        let mut found = vec![None; pointers.slots.len()];
        let mut json = serde_json::Deserializer::from_str(text);
        Walk {
            node: &pointers.root,
            found: &mut found,
        }
        .deserialize(&mut json)?;
        json.end()?;
        Ok(Self {
            root: text.trim_ascii(),
            pointers,
            found,
        })
    }

    /// The value at JSON pointer `pointer` (RFC 6901), if there is one.
    pub fn get(&self, pointer: &str) -> Option<Value> {
        let text = match self.pointers.slot(pointer) {
            Some(slot) => self.found[slot]?.get(),
            None => walk(self.root, pointer)?,
        };
        serde_json::from_str(text).ok()
    }
}

/// serde_json's own error for a body that is not UTF-8: where the bad byte is.
fn utf8_error(body: &[u8]) -> serde_json::Error {
    // Taking the document as raw text checks its UTF-8 (which skipping it does not).
    match serde_json::from_slice::<&RawValue>(body) {
        Err(error) => error,
        Ok(_) => serde::de::Error::custom("the body is not valid UTF-8"),
    }
}

/// Notes, in `found`, the raw value at each pointer ending at or below `node`, skipping
/// (but still checking) the rest.
struct Walk<'n, 'f, 'a> {
    node: &'n Node,
    found: &'f mut [Option<&'a RawValue>],
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        let Walk { node, found } = self;
        match (node.slot, node.children.is_empty()) {
            (None, true) => IgnoredAny::deserialize(deserializer).map(drop),
            (Some(slot), true) => {
                found[slot] = Some(<&RawValue>::deserialize(deserializer)?);
                Ok(())
            }
            (None, false) => deserializer.deserialize_any(Below { node, found }),
            // A pointer ends here and others go on below (rare): keep the text, then walk it.
            (Some(slot), false) => {
                let raw = <&RawValue>::deserialize(deserializer)?;
                found[slot] = Some(raw);
                let mut json = serde_json::Deserializer::from_str(raw.get());
                json.deserialize_any(Below { node, found })
                    .map_err(<D::Error as serde::de::Error>::custom)
            }
        }
    }
}

/// Visits the value at `node`, whatever it is, walking into the members or elements that
/// the pointers below go on to.
struct Below<'n, 'f, 'a> {
    node: &'n Node,
    found: &'f mut [Option<&'a RawValue>],
}

impl Below<'_, '_, '_> {
    /// Forgets every value noted at or below `node`: a later duplicate key replaces the
    /// earlier value whole, as in `serde_json::Value`.
    fn forget(node: &Node, found: &mut [Option<&RawValue>]) {
        if let Some(slot) = node.slot {
            found[slot] = None;
        }
        for child in &node.children {
            Self::forget(&child.node, found);
        }
    }
}

impl<'de> Visitor<'de> for Below<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(key)) = map.next_key()? {
            match self.node.children.iter().find(|child| child.token == key) {
                Some(child) => {
                    Self::forget(&child.node, self.found);
                    map.next_value_seed(Walk {
                        node: &child.node,
                        found: self.found,
                    })?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for index in 0.. {
            let child = self
                .node
                .children
                .iter()
                .find(|child| child.index == Some(index));
            let more = match child {
                Some(child) => seq
                    .next_element_seed(Walk {
                        node: &child.node,
                        found: self.found,
                    })?
                    .is_some(),
                None => seq.next_element::<IgnoredAny>()?.is_some(),
            };
            if !more {
                break;
            }
        }
        Ok(())
    }

    // A scalar has nothing below it.
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// The raw text at `pointer` in `root`, by walking the text (for a pointer not noted).
fn walk<'a>(root: &'a str, pointer: &str) -> Option<&'a str> {
    if pointer.is_empty() {
        return Some(root);
    }
    let mut current = root;
    for token in pointer.strip_prefix('/')?.split('/') {
        current = child(current, &unescape(token))?;
    }
    Some(current)
}

fn unescape(token: &str) -> Cow<'_, str> {
    if token.contains('~') {
        Cow::Owned(token.replace("~1", "/").replace("~0", "~"))
    } else {
        Cow::Borrowed(token)
    }
}

/// `token` as an array index: decimal digits without a sign or leading zeros (RFC 6901).
fn array_index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() > 1) {
        return None;
    }
    token.parse().ok()
}

/// The member `token` of an object, or the element `token` of an array, as raw text.
fn child<'a>(text: &'a str, token: &str) -> Option<&'a str> {
    let mut json = serde_json::Deserializer::from_str(text);
    match text.trim_start().as_bytes().first()? {
        b'{' => Member(token).deserialize(&mut json).ok().flatten(),
        b'[' => {
            let index = array_index(token)?;
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
        "twice": {"k": 1, "gone": true, "list": [1, 2]}, "twice": {"k": 2, "list": "x"},
        "top": 1, "t\u006fp": 2, "~/": {"k": "v"}} "#;

    const POINTERS: [&str; 25] = [
        "/event/id",
        "/event/type",
        "/data/campaign/id",
        "/data/list/0",
        "/data/list/1/x",
        "/data/list/2",
        "/data/a~1b/m~0n",
        "/data/escaped",
        "/data/dup",
        "/twice/k",
        "/twice/gone",
        "/twice/list/0",
        "/top",
        "/~0~1/k",
        "/event",
        "",
        "/missing",
        "/data/list/3",
        "/data/list/x",
        "/data/list/01",
        "/event/id/deeper",
        "/data/campaign/id/",
        "/",
        "no-leading-slash",
        "/data/list/1",
    ];

    fn assert_like_value_pointer(payload: &Payload<'_>, pointers: &[&str]) {
        let tree: Value = serde_json::from_str(BODY).unwrap();
        for pointer in pointers {
            assert_eq!(
                payload.get(pointer),
                tree.pointer(pointer).cloned(),
                "{pointer:?}"
            );
        }
    }

    #[test]
    fn looks_up_values_like_value_pointer_does() {
        let payload = Payload::parse(BODY.as_bytes()).unwrap();
        assert_like_value_pointer(&payload, &POINTERS);
        assert_eq!(payload.get("/data/campaign/id"), Some(json!(41001)));
    }

    /// The values noted in the validating pass are the ones a walk finds: the last of
    /// duplicate keys, escaped keys, array elements, a pointer that ends where others go on.
    #[test]
    fn noted_values_are_the_ones_value_pointer_finds() {
        let every = Pointers::new(POINTERS);
        let payload = Payload::parse_noting(BODY.as_bytes(), &every).unwrap();
        assert!(
            payload.found.iter().any(Option::is_some),
            "nothing was noted"
        );
        assert_like_value_pointer(&payload, &POINTERS);
        assert_eq!(payload.get("/twice/k"), Some(json!(2)));
        assert_eq!(
            payload.get("/twice/gone"),
            None,
            "from the replaced duplicate"
        );

        // Noting some pointers, the others are still answered by walking the text.
        let some = Pointers::new(["/data/campaign/id", "/twice/k"]);
        let payload = Payload::parse_noting(BODY.as_bytes(), &some).unwrap();
        assert_like_value_pointer(&payload, &POINTERS);
    }

    #[test]
    fn a_noted_pointer_reads_its_slot_not_the_text() {
        let pointers = Pointers::new(["/event/id"]);
        let mut payload = Payload::parse_noting(BODY.as_bytes(), &pointers).unwrap();
        assert_eq!(payload.get("/event/id"), Some(json!(5367)));
        payload.found[0] = None;
        assert_eq!(payload.get("/event/id"), None);
    }

    #[test]
    fn invalid_utf8_in_a_skipped_string_is_refused() {
        let body = b"{\"event\": {\"id\": 1}, \"data\": {\"name\": \"\xff\"}}";
        for pointers in [Pointers::default(), Pointers::new(["/event/id"])] {
            let error = Payload::parse_noting(body, &pointers).unwrap_err();
            assert!(
                error
                    .to_string()
                    .contains("invalid unicode code point at line 1"),
                "{error}"
            );
        }
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
        let deep_objects = r#"{"a":"#.repeat(100_000);
        assert!(Payload::parse(deep_objects.as_bytes()).is_err());
        let noted = Pointers::new(["/a/0/0/0"]);
        assert!(Payload::parse_noting(deep_in_an_object.as_bytes(), &noted).is_err());
        let noted = Pointers::new(["/a/a/a/a"]);
        assert!(Payload::parse_noting(deep_objects.as_bytes(), &noted).is_err());
    }

    /// Random documents (nested objects with duplicate and escaped keys, arrays, scalars)
    /// and random pointers: every lookup, noted or walked, agrees with `Value::pointer`.
    #[test]
    fn random_documents_agree_with_value_pointer() {
        // Keys as written in the JSON text, and the pointer tokens that name them (or not).
        const KEYS: [&str; 6] = ["a", "b", "0", "1", "a/b", "\\u0061"];
        const TOKENS: [&str; 8] = ["a", "b", "0", "1", "01", "a~1b", "2", "x"];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |below: usize| {
            // xorshift64: reproducible, no dependency.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % below as u64) as usize
        };
        fn document(depth: usize, next: &mut impl FnMut(usize) -> usize, out: &mut String) {
            match if depth == 0 { 2 + next(3) } else { next(5) } {
                0 => {
                    out.push('{');
                    for member in 0..next(5) {
                        if member > 0 {
                            out.push(',');
                        }
                        out.push('"');
                        out.push_str(KEYS[next(KEYS.len())]);
                        out.push_str("\":");
                        document(depth - 1, next, out);
                    }
                    out.push('}');
                }
                1 => {
                    out.push('[');
                    for element in 0..next(4) {
                        if element > 0 {
                            out.push(',');
                        }
                        document(depth - 1, next, out);
                    }
                    out.push(']');
                }
                2 => out.push_str(["1", "-2.5", "1e3", "18446744073709551616"][next(4)]),
                3 => out.push_str(["\"s\"", "\"\\u00e9\\n\"", "\"\""][next(3)]),
                _ => out.push_str(["true", "false", "null"][next(3)]),
            }
        }
        for _ in 0..3000 {
            let mut text = String::new();
            document(4, &mut next, &mut text);
            let tree: Value = serde_json::from_str(&text).unwrap();
            let pointers: Vec<String> = (0..6)
                .map(|_| {
                    (0..next(5))
                        .map(|_| format!("/{}", TOKENS[next(TOKENS.len())]))
                        .collect()
                })
                .collect();
            let every = Pointers::new(pointers.iter().map(String::as_str));
            let half = Pointers::new(pointers.iter().step_by(2).map(String::as_str));
            for noted in [&every, &half, &NO_POINTERS] {
                let payload = Payload::parse_noting(text.as_bytes(), noted).unwrap();
                for pointer in &pointers {
                    assert_eq!(
                        payload.get(pointer),
                        tree.pointer(pointer).cloned(),
                        "{pointer:?} in {text}"
                    );
                }
            }
            // The same document with one byte dropped or one added is accepted exactly when
            // serde_json accepts it: noting never lets a broken document through.
            let at = next(text.len() + 1);
            let broken = match next(2) {
                0 if at < text.len()
                    && text.is_char_boundary(at + 1)
                    && text.is_char_boundary(at) =>
                {
                    format!("{}{}", &text[..at], &text[at + 1..])
                }
                _ if text.is_char_boundary(at) => {
                    let extra = ['{', '}', '[', ']', ',', ':', '"', '\\', 'x', ' '][next(10)];
                    format!("{}{extra}{}", &text[..at], &text[at..])
                }
                _ => continue,
            };
            let valid = serde_json::from_str::<Value>(&broken).is_ok();
            for noted in [&every, &NO_POINTERS] {
                assert_eq!(
                    Payload::parse_noting(broken.as_bytes(), noted).is_ok(),
                    valid,
                    "{broken}"
                );
            }
        }
    }
}
